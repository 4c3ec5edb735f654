//! Checks of the control-host files a configuration names (`priv_key_file`,
//! `container.setup_script`), made on what [`Env::file_info`] reports, so a file that cannot
//! work is refused before any host is contacted.

use serde_json::{Map, Value};

use super::pyrepr::{str_repr, value_repr};
use super::{Env, paths};
use crate::error::Issue;

/// How many leading bytes of a regular file [`Env::file_info`] returns: enough for a PEM or
/// OpenSSH key header after a few blank lines.
pub const FILE_HEAD_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileKind {
    #[default]
    Missing,
    Regular,
    Directory,
    /// A FIFO, socket or device: nothing a key or a script can be read from reliably.
    Other,
}

/// What the control host's file system says about a path, links followed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileInfo {
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
    /// The first [`FILE_HEAD_BYTES`] bytes of a regular file.
    pub head: Vec<u8>,
    /// Why the path could not be examined or read, when it could not (permissions, I/O).
    pub error: Option<String>,
}

/// `abspath(expanduser(p))`: where the control host will open a configured path.
pub fn resolve_local_path(given: &str, env: &dyn Env) -> String {
    paths::abspath(&paths::expanduser(given, env), env)
}

fn shown(given: &str, resolved: &str) -> String {
    if given == resolved {
        str_repr(given)
    } else {
        format!("{} (resolved to {})", str_repr(given), str_repr(resolved))
    }
}

/// The key labels OpenSSH reads: its own format, PEM (PKCS#1 RSA, DSA, EC) and PKCS#8 (plain
/// and encrypted).
const KEY_LABELS: [&str; 6] = [
    "OPENSSH PRIVATE KEY",
    "RSA PRIVATE KEY",
    "DSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

/// Whether the first non-empty line of `head` is the header of a private key OpenSSH reads.
pub fn is_private_key_header(head: &[u8]) -> bool {
    first_line(head).is_some_and(|line| {
        KEY_LABELS
            .iter()
            .any(|label| line == format!("-----BEGIN {label}-----"))
    })
}

fn first_line(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// What a missing key file means: an error, or (checking a file away from the control host) a
/// warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingKey {
    Error,
    Warn,
}

/// Check `priv_key_file` (placeholders already substituted) the way OpenSSH will use it:
/// present, a regular file, private to its owner, and a private key. Errors and warnings are
/// appended; nothing is returned because the configured string is kept as given.
pub fn check_key_file(
    given: &str,
    env: &dyn Env,
    missing: MissingKey,
    errors: &mut Vec<Issue>,
    warnings: &mut Vec<Issue>,
) {
    const PATH: &str = "priv_key_file";
    let resolved = resolve_local_path(given, env);
    let info = env.file_info(&resolved);
    let what = shown(given, &resolved);
    match info.kind {
        FileKind::Missing => {
            if let Some(e) = &info.error {
                errors.push(Issue::at(PATH, format!("{what} cannot be examined: {e}")));
            } else if missing == MissingKey::Warn {
                warnings.push(Issue::at(
                    PATH,
                    format!(
                        "{what} does not exist on this machine; commands that connect \
                         (plan, up, down, status, exec) refuse to run until it does"
                    ),
                ));
            } else {
                errors.push(Issue::at(
                    PATH,
                    format!(
                        "{what} does not exist; create the key (ssh-keygen -t ed25519 -f {}) \
                         or correct the path",
                        str_repr(&resolved)
                    ),
                ));
            }
        }
        FileKind::Directory => errors.push(Issue::at(
            PATH,
            format!("{what} is a directory; name the private key file in it (e.g. id_ed25519)"),
        )),
        FileKind::Other => errors.push(Issue::at(
            PATH,
            format!("{what} is not a regular file; name the private key file"),
        )),
        FileKind::Regular => {
            if info.mode & 0o077 != 0 {
                errors.push(Issue::at(
                    PATH,
                    format!(
                        "{what} is accessible by group or others (mode {:04o}); OpenSSH refuses \
                         it (UNPROTECTED PRIVATE KEY FILE): run chmod 600 {}",
                        info.mode & 0o7777,
                        str_repr(&resolved)
                    ),
                ));
            }
            if let Some(e) = &info.error {
                errors.push(Issue::at(
                    PATH,
                    format!(
                        "{what} cannot be read ({e}); it must be readable by the user running \
                         cvs-core"
                    ),
                ));
            } else if info.size == 0 {
                errors.push(Issue::at(
                    PATH,
                    format!(
                        "{what} is empty; name the private key file (e.g. ~/.ssh/id_ed25519) or \
                         create one with ssh-keygen"
                    ),
                ));
            } else if !is_private_key_header(&info.head) {
                let public = first_line(&info.head).is_some_and(|l| {
                    ["ssh-", "ecdsa-", "sk-"]
                        .iter()
                        .any(|prefix| l.starts_with(prefix))
                });
                let hint = if public {
                    "it looks like a public key; name the private key (the file without .pub)"
                } else {
                    "its first line is not a '-----BEGIN ... PRIVATE KEY-----' header \
                     (OpenSSH, PEM or PKCS#8); name the private key file (e.g. ~/.ssh/id_ed25519)"
                };
                errors.push(Issue::at(
                    PATH,
                    format!("{what} is not a private key: {hint}"),
                ));
            }
        }
    }
}

/// The native `container.setup_script` rule, stricter than CVS's (which `resolve_setup_script`
/// keeps): null or absent means the packaged default; anything else must be a non-empty path
/// to a non-empty regular file. Returns the absolute path to store, or the issue.
pub fn check_setup_script(
    container: &Map<String, Value>,
    default_script: &str,
    env: &dyn Env,
) -> Result<String, Issue> {
    const PATH: &str = "container.setup_script";
    let (given, is_default) = match container.get("setup_script") {
        None | Some(Value::Null) => (default_script, true),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(Issue::at(
                PATH,
                "is an empty string; omit the key (or set it to null) to use the packaged \
                 default script",
            ));
        }
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(Issue::at(PATH, "must not contain a NUL character"));
        }
        Some(Value::String(s)) => (s.as_str(), false),
        Some(other) => {
            return Err(Issue::at(
                PATH,
                format!("expected a path string or null, got {}", value_repr(other)),
            ));
        }
    };
    let resolved = if is_default {
        given.to_owned()
    } else {
        resolve_local_path(given, env)
    };
    let info = env.file_info(&resolved);
    let what = shown(given, &resolved);
    // CVS's own wording where CVS has a rule (users grep logs for it); ours past it.
    let problem = match info.kind {
        FileKind::Missing if is_default => {
            return Err(Issue::verbatim(
                PATH,
                format!(
                    "packaged default container setup script is missing: {} (broken cvs-core \
                     install?)",
                    str_repr(&resolved)
                ),
            ));
        }
        FileKind::Missing if info.error.is_none() => {
            return Err(Issue::verbatim(
                PATH,
                format!(
                    "container.setup_script not found: {} (resolved to {})",
                    str_repr(given),
                    str_repr(&resolved)
                ),
            ));
        }
        FileKind::Missing => Some(format!(
            "{what} cannot be examined: {}",
            info.error.as_deref().unwrap_or_default()
        )),
        FileKind::Directory => Some(format!(
            "{what} is a directory; name the script file to run in each new container"
        )),
        FileKind::Other => Some(format!("{what} is not a regular file")),
        FileKind::Regular => match &info.error {
            Some(e) => Some(format!("{what} cannot be read: {e}")),
            None if info.size == 0 => Some(format!(
                "{what} is empty (0 bytes), so it would provision nothing; write the script, or \
                 omit the key for the packaged default"
            )),
            None => None,
        },
    };
    match problem {
        Some(p) => Err(Issue::at(PATH, p)),
        None => Ok(resolved),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{FakeEnv, key_file, regular};
    use serde_json::json;

    fn key_issues(
        path: &str,
        info: Option<FileInfo>,
        missing: MissingKey,
    ) -> (Vec<String>, Vec<String>) {
        let mut env = FakeEnv::default();
        if let Some(info) = info {
            env.files.insert("/home/alice/.ssh/k".into(), info);
        }
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        check_key_file(path, &env, missing, &mut errors, &mut warnings);
        let text = |v: Vec<Issue>| v.into_iter().map(|i| i.message).collect();
        (text(errors), text(warnings))
    }

    #[test]
    fn key_file_table() {
        let dir = FileInfo {
            kind: FileKind::Directory,
            mode: 0o700,
            ..FileInfo::default()
        };
        let fifo = FileInfo {
            kind: FileKind::Other,
            ..FileInfo::default()
        };
        let open = FileInfo {
            mode: 0o644,
            ..key_file()
        };
        let public = regular(0o600, b"ssh-ed25519 AAAAC3Nza alice@h\n");
        let text = regular(0o600, b"hello\n");
        let empty = regular(0o600, b"");
        let unreadable = FileInfo {
            error: Some("Permission denied".into()),
            ..key_file()
        };
        let cases: Vec<(Option<FileInfo>, MissingKey, &str, &str)> = vec![
            (Some(key_file()), MissingKey::Error, "", ""),
            (
                None,
                MissingKey::Error,
                "priv_key_file: '~/.ssh/k' (resolved to '/home/alice/.ssh/k') does not exist; \
                 create the key (ssh-keygen -t ed25519 -f '/home/alice/.ssh/k') or correct the path",
                "",
            ),
            (
                None,
                MissingKey::Warn,
                "",
                "priv_key_file: '~/.ssh/k' (resolved to '/home/alice/.ssh/k') does not exist on \
                 this machine; commands that connect (plan, up, down, status, exec) refuse to run \
                 until it does",
            ),
            (Some(dir), MissingKey::Warn, "is a directory", ""),
            (Some(fifo), MissingKey::Error, "is not a regular file", ""),
            (
                Some(open),
                MissingKey::Error,
                "is accessible by group or others (mode 0644); OpenSSH refuses it (UNPROTECTED \
                 PRIVATE KEY FILE): run chmod 600 '/home/alice/.ssh/k'",
                "",
            ),
            (
                Some(public),
                MissingKey::Error,
                "it looks like a public key",
                "",
            ),
            (
                Some(text),
                MissingKey::Error,
                "is not a private key: its first line",
                "",
            ),
            (Some(empty), MissingKey::Error, "is empty", ""),
            (
                Some(unreadable),
                MissingKey::Error,
                "cannot be read (Permission denied)",
                "",
            ),
        ];
        for (info, missing, want_error, want_warning) in cases {
            let (errors, warnings) = key_issues("~/.ssh/k", info.clone(), missing);
            for (got, want) in [(&errors, want_error), (&warnings, want_warning)] {
                if want.is_empty() {
                    assert!(got.is_empty(), "{info:?}: unexpected {got:?}");
                } else {
                    assert_eq!(got.len(), 1, "{info:?}: {got:?}");
                    assert!(got[0].contains(want), "{info:?}: {got:?} lacks {want:?}");
                    assert!(got[0].starts_with("priv_key_file: "), "{got:?}");
                }
            }
        }
    }

    #[test]
    fn key_headers() {
        for good in [
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn",
            "\n\n  -----BEGIN RSA PRIVATE KEY-----  \r\nMIIE",
            "\u{feff}-----BEGIN PRIVATE KEY-----\n",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----",
            "-----BEGIN EC PRIVATE KEY-----\n",
            "-----BEGIN DSA PRIVATE KEY-----\n",
        ] {
            assert!(is_private_key_header(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "",
            "\n\n",
            "-----BEGIN PUBLIC KEY-----\n",
            "-----BEGIN CERTIFICATE-----\n",
            "ssh-rsa AAAA\n",
            "x\n-----BEGIN OPENSSH PRIVATE KEY-----\n",
            "-----BEGIN OPENSSH PRIVATE KEY",
            "PuTTY-User-Key-File-3: ssh-ed25519\n",
        ] {
            assert!(!is_private_key_header(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn setup_script_table() {
        let mut env = FakeEnv::default();
        env.files.insert(
            "/work/dir/d".into(),
            FileInfo {
                kind: FileKind::Directory,
                mode: 0o755,
                ..FileInfo::default()
            },
        );
        env.files
            .insert("/work/dir/empty.sh".into(), regular(0o755, b""));
        let default = "/pkg/default_container_setup.sh";
        let check = |v: Value| {
            check_setup_script(v.as_object().unwrap(), default, &env)
                .map_err(|i| (i.path, i.message))
        };
        assert_eq!(check(json!({})).unwrap(), default);
        assert_eq!(check(json!({"setup_script": null})).unwrap(), default);
        assert_eq!(
            check(json!({"setup_script": "setup.sh"})).unwrap(),
            "/work/dir/setup.sh"
        );
        assert_eq!(
            check(json!({"setup_script": "~/s.sh"})).unwrap(),
            "/home/alice/s.sh"
        );
        let cases = [
            (
                json!(""),
                "container.setup_script: is an empty string; omit the key (or set it to null) to use the packaged default script",
            ),
            (
                json!("d"),
                "container.setup_script: 'd' (resolved to '/work/dir/d') is a directory; name the script file to run in each new container",
            ),
            (
                json!("empty.sh"),
                "container.setup_script: 'empty.sh' (resolved to '/work/dir/empty.sh') is empty (0 bytes)",
            ),
            (
                json!("nope.sh"),
                "container.setup_script not found: 'nope.sh' (resolved to '/work/dir/nope.sh')",
            ),
            (
                json!(false),
                "container.setup_script: expected a path string or null, got False",
            ),
            (
                json!(0),
                "container.setup_script: expected a path string or null, got 0",
            ),
            (
                json!("a\0b"),
                "container.setup_script: must not contain a NUL character",
            ),
        ];
        for (value, want) in cases {
            let (path, message) = check(json!({ "setup_script": value })).unwrap_err();
            assert_eq!(path, "container.setup_script");
            assert!(message.starts_with(want), "{value}: {message}");
        }
        let broken = check_setup_script(&Map::new(), "/nope.sh", &env).unwrap_err();
        assert_eq!(
            broken.message,
            "packaged default container setup script is missing: '/nope.sh' (broken cvs-core \
             install?)"
        );
    }
}
