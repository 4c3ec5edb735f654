//! Delivery of a container setup script: CVS's inline form (base64 on the command line, capped)
//! and an uncapped form that streams the script on the exec's stdin.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::docker::docker_exec_command;
use super::quote::join;
use crate::config::MAX_INLINE_SETUP_SCRIPT_BYTES;
use crate::error::{Error, Result};

/// Run inside the container by [`provision_stdin_command`]. It saves all of stdin first and
/// only then runs it with stdin from `/dev/null`, so a script that reads stdin (apt prompts,
/// `read`) cannot consume its own remaining text; it exits with the script's status and always
/// removes the temporary file.
pub const STDIN_RUNNER: &str = r#"f=$(mktemp) || exit 1; cat > "$f" || { rm -f "$f"; exit 1; }; bash "$f" < /dev/null; rc=$?; rm -f "$f"; exit $rc"#;

/// CVS's inline provisioning command, run through `docker exec ... bash -c`:
/// `set -o pipefail; echo <base64> | base64 -d | bash`. Scripts over
/// [`MAX_INLINE_SETUP_SCRIPT_BYTES`] are refused (exactly the limit is allowed, as in CVS),
/// because the whole command line travels through SSH and `bash -c`.
pub fn provision_command(script: &[u8], label: &str) -> Result<String> {
    provision_command_limited(script, label, MAX_INLINE_SETUP_SCRIPT_BYTES)
}

/// [`provision_command`] with another size limit (still inclusive). CVS reads its
/// `MAX_INLINE_SETUP_SCRIPT_BYTES` on each call, so a caller that changes it moves the limit.
pub fn provision_command_limited(script: &[u8], label: &str, limit: usize) -> Result<String> {
    if script.len() > limit {
        return Err(Error::ScriptTooLarge {
            label: label.to_owned(),
            size: script.len(),
            limit,
        });
    }
    let echo = join(&["echo".to_owned(), STANDARD.encode(script)])?;
    Ok(format!("set -o pipefail; {echo} | base64 -d | bash"))
}

/// `<prefix> docker exec -i <name> bash -c <STDIN_RUNNER>`: the uncapped form; the caller writes
/// the script to the command's stdin and closes it.
pub fn provision_stdin_command(prefix: &str, name: &str) -> Result<String> {
    docker_exec_command(prefix, name, STDIN_RUNNER, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(cmd: &str) -> Vec<u8> {
        let b64 = cmd
            .strip_prefix("set -o pipefail; echo ")
            .and_then(|s| s.strip_suffix(" | base64 -d | bash"))
            .unwrap_or_else(|| panic!("unexpected shape: {cmd}"));
        let b64 = if b64 == "''" { "" } else { b64 };
        STANDARD.decode(b64).unwrap()
    }

    #[test]
    fn inline_command_exact_and_decodes_back() {
        let script = b"#!/bin/bash\nset -euo pipefail\necho 'hi' \"$HOME\"\n";
        let cmd = provision_command(script, "container.setup_script '/s.sh'").unwrap();
        assert_eq!(
            cmd,
            format!(
                "set -o pipefail; echo {} | base64 -d | bash",
                STANDARD.encode(script)
            )
        );
        assert!(cmd.starts_with("set -o pipefail; "));
        assert_eq!(decoded(&cmd), script);
        assert_eq!(
            provision_command(b"ls", "x").unwrap(),
            "set -o pipefail; echo bHM= | base64 -d | bash"
        );
        assert_eq!(
            provision_command(b"", "x").unwrap(),
            "set -o pipefail; echo '' | base64 -d | bash"
        );
    }

    #[test]
    fn size_limit_is_inclusive() {
        let at_limit = vec![b'#'; MAX_INLINE_SETUP_SCRIPT_BYTES];
        assert_eq!(MAX_INLINE_SETUP_SCRIPT_BYTES, 16384);
        let cmd = provision_command(&at_limit, "s").unwrap();
        assert_eq!(decoded(&cmd), at_limit);
        let over = vec![b'#'; MAX_INLINE_SETUP_SCRIPT_BYTES + 1];
        let err = provision_command(&over, "container.setup_script '/big.sh'").unwrap_err();
        assert_eq!(
            err,
            Error::ScriptTooLarge {
                label: "container.setup_script '/big.sh'".to_owned(),
                size: 16385,
                limit: 16384,
            }
        );
        assert_eq!(
            err.to_string(),
            "container.setup_script '/big.sh' is too large for inline delivery (16385 bytes > \
             16384). Slim the script, or bake the packages into the image."
        );
    }

    #[test]
    fn a_caller_moves_the_limit_either_way() {
        let script = vec![b'#'; MAX_INLINE_SETUP_SCRIPT_BYTES + 10];
        let cmd = provision_command_limited(&script, "s", script.len()).unwrap();
        assert_eq!(decoded(&cmd), script);
        let err = provision_command_limited(b"abc", "s", 2).unwrap_err();
        assert_eq!(
            err,
            Error::ScriptTooLarge {
                label: "s".to_owned(),
                size: 3,
                limit: 2,
            }
        );
    }

    #[test]
    fn stdin_command_exact() {
        let quoted = r#"'f=$(mktemp) || exit 1; cat > "$f" || { rm -f "$f"; exit 1; }; bash "$f" < /dev/null; rc=$?; rm -f "$f"; exit $rc'"#;
        for (prefix, lead) in [("sudo", "sudo "), ("sudo -n ", "sudo -n "), ("", "")] {
            assert_eq!(
                provision_stdin_command(prefix, "c1").unwrap(),
                format!("{lead}docker exec -i c1 bash -c {quoted}")
            );
        }
        let words = shell_words::split(&provision_stdin_command("sudo", "c1").unwrap()).unwrap();
        assert_eq!(
            words,
            [
                "sudo",
                "docker",
                "exec",
                "-i",
                "c1",
                "bash",
                "-c",
                STDIN_RUNNER
            ]
        );
        for name in ["-x", "a;b", ""] {
            assert!(
                matches!(
                    provision_stdin_command("sudo", name),
                    Err(Error::InvalidArgument(_))
                ),
                "{name:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn inline_round_trips(script in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let cmd = provision_command(&script, "s").unwrap();
            prop_assert_eq!(decoded(&cmd), script);
        }
    }
}
