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

/// The line [`kill_job_script`] ends with: `cvs-kill found=<n> survivors=<m>`.
pub const KILL_REPORT: &str = "cvs-kill";

/// A POSIX sh script that ends every process of a job and says whether it did.
///
/// It finds the processes carrying the marker (with the marker passed into `docker exec`, the
/// processes inside a container carry it too: they are visible in the host's /proc), and the
/// sessions of those processes whose leader is either marked or a child of sshd: an SSH
/// channel's session is exactly one command's process tree (it also holds what dropped the
/// marker, such as `sudo`), and `docker exec` gives each exec its own session. Any other session
/// (one a container runtime might share between execs and its shim) is never signalled as a
/// whole. Everything found gets TERM, then KILL after `grace_ms`; the last line reports how many
/// processes were found and how many survived, so the caller can say "killed" only when that
/// is proven. Run it with the privilege that can see and signal container processes (root).
/// Uses only /proc, grep and kill.
pub fn kill_job_script(token: &str, grace_ms: u64) -> Result<String> {
    check_token(token)?;
    let steps = grace_ms.div_ceil(100).max(1);
    Ok(format!(
        r#"marks() {{ grep -lzxF {JOB_VAR}={token} /proc/[0-9]*/environ 2>/dev/null | sed 's@^/proc/@@; s@/environ$@@' | tr '\n' ' '; }}
marked=$(marks)
field() {{ st=; read -r st 2>/dev/null < "/proc/$1/stat" || return 1; st=${{st##*) }}; set -- $st; echo "$4 $2 $1"; }}
sids=''
for p in $marked; do
  f=$(field "$p") || continue; set -- $f; s=$1
  case " $marked " in *" $s "*) sids="$sids $s"; continue;; esac
  f=$(field "$s") || continue; set -- $f
  c=$(cat "/proc/$2/comm" 2>/dev/null)
  case "$c" in sshd|sshd-session) sids="$sids $s";; esac
done
victims() {{
  v="$marked $(marks)"
  for d in /proc/[0-9]*; do
    f=$(field "${{d#/proc/}}") || continue; set -- $f
    for s in $sids; do [ "$1" = "$s" ] && v="$v ${{d#/proc/}}"; done
  done
  # A zombie is dead (its parent, maybe a container's `sleep` init, may never reap it).
  for p in $(echo $v | tr ' ' '\n' | sort -un); do
    [ "$p" = "$$" ] && continue
    f=$(field "$p") || continue; set -- $f
    case "$3" in Z|X) ;; *) echo "$p";; esac
  done
}}
found=$(victims); n=$(echo $found | wc -w)
if [ -n "$found" ]; then
  kill -TERM $found 2>/dev/null
  i=0
  while [ $i -lt {steps} ]; do
    sleep 0.1; left=$(victims); [ -z "$left" ] && break; i=$((i + 1))
  done
  left=$(victims); [ -n "$left" ] && kill -KILL $left 2>/dev/null && sleep 0.1
fi
left=$(victims)
echo "{KILL_REPORT} found=$n survivors=$(echo $left | wc -w)"
"#
    ))
}

/// What [`kill_job_script`] printed: `Some((found, survivors))`, `None` when its report line is
/// missing (it did not run to the end: no kill can be claimed).
pub fn parse_kill_report(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().rev().find(|l| l.starts_with(KILL_REPORT))?;
    let mut found = None;
    let mut survivors = None;
    for word in line.split_whitespace() {
        if let Some(v) = word.strip_prefix("found=") {
            found = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("survivors=") {
            survivors = v.parse().ok();
        }
    }
    Some((found?, survivors?))
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
        assert!(s.contains("sshd|sshd-session"));
        assert!(kill_job_script("t;rm", 10).is_err());
    }

    #[test]
    fn kill_reports_parse_or_claim_nothing() {
        assert_eq!(
            parse_kill_report("noise\ncvs-kill found=3 survivors=0\n"),
            Some((3, 0))
        );
        assert_eq!(
            parse_kill_report("cvs-kill found=2 survivors=1"),
            Some((2, 1))
        );
        assert_eq!(parse_kill_report(""), None);
        assert_eq!(parse_kill_report("cvs-kill found=x survivors=0"), None);
    }

    #[test]
    fn file_commands_quote_paths() {
        assert_eq!(write_file_command("/tmp/a b").unwrap(), "cat > '/tmp/a b'");
        assert_eq!(read_file_command("/x/y.log").unwrap(), "cat -- /x/y.log");
        assert!(read_file_command("").is_err());
    }
}
