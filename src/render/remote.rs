//! Shell text sent to hosts by the fan-out engine itself: the job marker every command carries,
//! the script that kills a job's processes, and the file-streaming commands.

use super::quote::quote;
use crate::error::{Error, Result};

/// Environment variable naming the job a remote process belongs to. Every process a command
/// starts inherits it, so the job can be found and killed from another SSH session even after
/// the shell `exec`s its last command.
pub const JOB_VAR: &str = "CVS_CORE_JOB";

fn check_token(token: &str) -> Result<()> {
    if token.is_empty() || !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Error::InvalidArgument(format!(
            "job token {token:?} must be non-empty [A-Za-z0-9-]"
        )));
    }
    Ok(())
}

/// The command as sent: the job marker, then the caller's command unchanged (it runs in the
/// user's login shell exactly as it would with plain `ssh host cmd`).
pub fn job_command(token: &str, cmd: &str) -> Result<String> {
    check_token(token)?;
    Ok(format!("export {JOB_VAR}={token}; {cmd}"))
}

/// A POSIX sh script (for the login shell of the user) that ends every process of a job: it finds
/// the processes carrying the marker, takes their SSH sessions (sshd gives each channel its own
/// session, so a session is exactly one command's process tree), sends TERM to every process of
/// those sessions, and KILL to what is left after `grace_ms`. Uses only /proc, grep and kill.
pub fn kill_job_script(token: &str, grace_ms: u64) -> Result<String> {
    check_token(token)?;
    let steps = grace_ms.div_ceil(100).max(1);
    Ok(format!(
        r#"sids=''
for f in $(grep -lzxF {JOB_VAR}={token} /proc/[0-9]*/environ 2>/dev/null); do
  read -r st < "${{f%/environ}}/stat" 2>/dev/null || continue
  st=${{st##*) }}; set -- $st; sids="$sids $4"
done
[ -n "$sids" ] || exit 0
signal_sessions() {{
  sig=$1; found=1
  for d in /proc/[0-9]*; do
    read -r st < "$d/stat" 2>/dev/null || continue
    st=${{st##*) }}; set -- $st
    for s in $sids; do
      if [ "$4" = "$s" ]; then kill -"$sig" "${{d#/proc/}}" 2>/dev/null; found=0; fi
    done
  done
  return $found
}}
signal_sessions TERM || exit 0
i=0
while [ $i -lt {steps} ]; do
  sleep 0.1
  signal_sessions 0 || exit 0
  i=$((i + 1))
done
signal_sessions KILL
exit 0
"#
    ))
}

/// Write stdin to `path` on the host (the upload path: any size, no command-line payload).
pub fn write_file_command(path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(Error::InvalidArgument(
            "remote path must not be empty".into(),
        ));
    }
    Ok(format!("cat > {}", quote(path)?))
}

/// Stream `path` on the host to stdout (the download path).
pub fn read_file_command(path: &str) -> Result<String> {
    if path.is_empty() {
        return Err(Error::InvalidArgument(
            "remote path must not be empty".into(),
        ));
    }
    Ok(format!("cat -- {}", quote(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_command_prefixes_the_marker() {
        assert_eq!(
            job_command("ab12-3", "echo hi; ls").unwrap(),
            "export CVS_CORE_JOB=ab12-3; echo hi; ls"
        );
        assert!(job_command("a b", "x").is_err());
        assert!(job_command("", "x").is_err());
    }

    #[test]
    fn kill_script_names_the_token_and_grace() {
        let s = kill_job_script("t1", 1000).unwrap();
        assert!(s.contains("grep -lzxF CVS_CORE_JOB=t1 /proc/[0-9]*/environ"));
        assert!(s.contains("while [ $i -lt 10 ]"));
        assert!(kill_job_script("t;rm", 10).is_err());
    }

    #[test]
    fn file_commands_quote_paths() {
        assert_eq!(write_file_command("/tmp/a b").unwrap(), "cat > '/tmp/a b'");
        assert_eq!(read_file_command("/x/y.log").unwrap(), "cat -- /x/y.log");
        assert!(read_file_command("").is_err());
    }
}
