//! One OpenSSH master per host: launched with `ssh -M -f -N`, reused through its control socket
//! by every later command (native mux), ended by PID or a stop request on close.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssh::Session;
use tokio::process::Command;

use super::options::{ConnectOptions, master_argv};
use super::result::Status;

/// A connected master. `session` multiplexes every command over the one connection.
pub struct Master {
    pub session: Arc<Session>,
    pub ctl: PathBuf,
    pub pid: Option<u32>,
    pub connect_time: Duration,
    /// A persistent master (see `persist`): it outlives the cluster, so closing the cluster
    /// leaves it running.
    pub persistent: bool,
    /// Found running (started by an earlier process or cluster), not launched now.
    pub reattached: bool,
}

/// Why a master could not be established, classified from ssh's own log.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub status: Status,
    pub message: String,
}

/// Map ssh's diagnostics to a status. ssh prints these exact phrases (OpenSSH 7-9).
pub fn classify_ssh_error(log: &str) -> Status {
    let l = log.to_lowercase();
    if l.contains("host key verification failed")
        || l.contains("remote host identification has changed")
        || l.contains("no matching host key type")
        || l.contains("host key for") && l.contains("has changed")
        || l.contains("is known and does not match")
    {
        Status::HostKeyMismatch
    } else if l.contains("permission denied")
        || l.contains("too many authentication failures")
        || l.contains("no more authentication methods")
    {
        Status::AuthFailed
    } else if l.contains("connection refused")
        || l.contains("no route to host")
        || l.contains("timed out")
        || l.contains("could not resolve hostname")
        || l.contains("name or service not known")
        || l.contains("network is unreachable")
        || l.contains("connection closed by")
        || l.contains("connection reset")
        || l.contains("kex_exchange_identification")
        || l.contains("banner exchange")
        || l.contains("broken pipe")
    {
        Status::Unreachable
    } else {
        Status::Error
    }
}

/// The last meaningful lines of ssh's log, for the per-host `error` text.
fn summarize(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "ssh exited without a diagnostic".to_owned()
    } else {
        tail.join(" | ")
    }
}

/// The environment variable naming the secret file for the askpass helper (a path, never the
/// secret).
const ASKPASS_FILE_ENV: &str = "CVS_CORE_ASKPASS_FILE";

/// ssh runs `SSH_ASKPASS` with the prompt as its only argument and reads the answer on its
/// stdout; this one prints the secret file. It lives in the cluster's private (0700) control
/// directory.
const ASKPASS_HELPER: &str = "#!/bin/sh\n# cvs-core: answers ssh's password prompt from a 0600 file removed after the connect\nexec cat -- \"$CVS_CORE_ASKPASS_FILE\"\n";

/// A host's password in a 0600 file beside its control socket, for the duration of one master
/// launch. OpenSSH takes a password only from a terminal or an askpass program; a file that
/// only this user can read, removed as soon as the master is up, keeps it off every command
/// line and environment (`ps`, `/proc/*/environ`).
struct SecretFile {
    path: PathBuf,
    helper: PathBuf,
}

impl SecretFile {
    fn write(ctl: &Path, secret: &str) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = ctl.parent().unwrap_or(Path::new("."));
        let helper = dir.join("askpass");
        if !helper.exists() {
            // Per host: hosts launch concurrently.
            let tmp = ctl.with_extension("askpass");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o700)
                .open(&tmp)?;
            f.write_all(ASKPASS_HELPER.as_bytes())?;
            drop(f);
            // Atomic: a concurrent launch never executes a half-written helper.
            std::fs::rename(&tmp, &helper)?;
        }
        let path = ctl.with_extension("pw");
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(secret.as_bytes())?;
        f.write_all(b"\n")?;
        Ok(SecretFile { path, helper })
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Launch the master for `host` with its control socket at `ctl`.
pub async fn launch(
    opts: &ConnectOptions,
    host: &str,
    ctl: &Path,
) -> Result<Master, ConnectFailure> {
    let started = Instant::now();
    let log = ctl.with_extension("log");
    let _ = std::fs::remove_file(ctl);
    let _ = std::fs::remove_file(&log);
    let argv = master_argv(opts, host, ctl, &log);
    let mut cmd = Command::new(&opts.ssh_program);
    // A launcher given up on (the guard below) must not go on to leave an untracked master on
    // the socket path a retry uses, nor its ProxyCommand (a `-J` hop's `ssh -W`, say): it runs
    // in a process group of its own, killed as a whole. A master that got as far as forking has
    // left that group (ssh -f daemonizes), so a live master's proxy is never in it.
    cmd.args(&argv)
        .kill_on_drop(true)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Removed when the launch returns, whatever happens: the master has authenticated (or
    // failed) by then, and nothing else reads the secret.
    let _secret = match &opts.password {
        Some(password) => {
            let file = SecretFile::write(ctl, password.expose()).map_err(|e| ConnectFailure {
                status: Status::Error,
                message: format!("cannot prepare password authentication: {e}"),
            })?;
            cmd.env("SSH_ASKPASS", &file.helper)
                .env("SSH_ASKPASS_REQUIRE", "force")
                .env(ASKPASS_FILE_ENV, &file.path);
            Some(file)
        }
        None => {
            // A password prompt must fail, never hang: no terminal, no askpass.
            cmd.env_remove("SSH_ASKPASS")
                .env("SSH_ASKPASS_REQUIRE", "never");
            None
        }
    };
    // ssh enforces ConnectTimeout itself (TCP connect and banner); the outer bound only guards
    // against an ssh that hangs in a way it does not time (a stuck ProxyCommand, say).
    let guard = opts.connect_timeout * 3 + Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + guard;
    let cannot_run = |e: std::io::Error| ConnectFailure {
        status: Status::Error,
        message: format!("cannot run {}: {e}", opts.ssh_program.display()),
    };
    let mut launcher = cmd.spawn().map_err(cannot_run)?;
    let group = launcher.id();
    // Recorded while it runs: if this process is SIGKILLed mid-connect, nothing here kills the
    // launcher, and the next process to take this socket ends it (`end_stale_launcher`).
    let record = ctl.with_extension("launcher");
    if let Some(pid) = group {
        let _ = std::fs::write(&record, pid.to_string());
    }
    let waited = tokio::time::timeout_at(deadline, launcher.wait()).await;
    let _ = std::fs::remove_file(&record);
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(cannot_run(e)),
        Err(_) => {
            if let Some(group) = group.and_then(|g| i32::try_from(g).ok()) {
                // SAFETY: killpg(2) on the process group this launch created for its launcher.
                unsafe {
                    libc::killpg(group, libc::SIGKILL);
                }
            }
            // The launcher may have forked its master just before it was killed.
            end_master_on(ctl).await;
            return Err(ConnectFailure {
                status: Status::Unreachable,
                message: format!("ssh did not finish connecting within {}s", guard.as_secs()),
            });
        }
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        return Err(ConnectFailure {
            status: classify_ssh_error(&log_text),
            message: summarize(&log_text),
        });
    }
    // Under the same deadline: a master that forked but does not answer its socket must not
    // hang the call.
    let pid = match tokio::time::timeout_at(deadline, master_pid(ctl)).await {
        Ok(pid) => pid,
        Err(_) => {
            end_master_on(ctl).await;
            return Err(ConnectFailure {
                status: Status::Error,
                message: format!(
                    "ssh connected but its master did not answer on {} within {}s",
                    ctl.display(),
                    guard.as_secs()
                ),
            });
        }
    };
    Ok(Master {
        session: Arc::new(mux_session(ctl)),
        ctl: ctl.to_path_buf(),
        pid,
        connect_time: started.elapsed(),
        persistent: false,
        reattached: false,
    })
}

/// Use the live master on `ctl` (started by this or an earlier process) without connecting.
pub fn attach(ctl: &Path, pid: u32, started: Instant) -> Master {
    Master {
        session: Arc::new(mux_session(ctl)),
        ctl: ctl.to_path_buf(),
        pid: Some(pid),
        connect_time: started.elapsed(),
        persistent: true,
        reattached: true,
    }
}

/// The live processes of this user with an argument starting with `prefix` (an ssh master's
/// `-S <control socket>`), with their last argument (the master's host).
pub fn masters_under(prefix: &Path) -> Vec<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let prefix = prefix.as_os_str().as_encoded_bytes();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if p.metadata().map(|m| m.uid() != uid).unwrap_or(true) || !running(pid) {
            continue;
        }
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        if args.iter().any(|arg| arg.starts_with(prefix)) {
            let host = args
                .last()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_default();
            found.push((pid, host));
        }
    }
    found
}

/// SIGTERM the processes [`masters_under`] finds for `prefix` that `keep(pid, host)` accepts;
/// returns them. Used where the exact socket is unknown (a killed process's masters).
pub fn term_masters_under(prefix: &Path, keep: impl Fn(u32, &str) -> bool) -> Vec<(u32, String)> {
    let mut signalled = Vec::new();
    for (pid, host) in masters_under(prefix) {
        if !keep(pid, &host) {
            continue;
        }
        if let Ok(raw) = i32::try_from(pid) {
            // SAFETY: kill(2) on a process of this user whose command line names a socket
            // under our own control directory.
            unsafe {
                libc::kill(raw, libc::SIGTERM);
            }
            signalled.push((pid, host));
        }
    }
    signalled
}

/// End whatever master of ours runs on `ctl` and remove the socket: used when a launch was
/// given up on. `terminate_pid` signals only a process naming exactly `ctl` (`masters_under`
/// matches by prefix).
async fn end_master_on(ctl: &Path) {
    for (pid, _) in masters_under(ctl) {
        terminate_pid(pid, ctl, Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_file(ctl);
}

/// End the launcher (and its process group: the ProxyCommand) that a process killed mid-connect
/// left on `ctl`, as recorded by `launch`; only if its command line names `ctl`. Called by
/// whoever holds the socket's lock and found no usable master on it.
pub fn end_stale_launcher(ctl: &Path) {
    let record = ctl.with_extension("launcher");
    let pid = std::fs::read_to_string(&record)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    if let Some(pid) = pid
        && ours(pid, ctl)
        && let Ok(group) = i32::try_from(pid)
    {
        // SAFETY: killpg(2) on the group `launch` created for this launcher (its leader is the
        // launcher, whose command line names our socket).
        unsafe {
            libc::killpg(group, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(record);
}

/// The native mux session of the master on `ctl` (its log beside it).
fn mux_session(ctl: &Path) -> Session {
    Session::resume_mux(
        ctl.to_path_buf().into_boxed_path(),
        Some(ctl.with_extension("log").into_boxed_path()),
    )
}

/// The master's PID through the mux protocol's alive check (also proves the socket answers).
pub async fn master_pid(ctl: &Path) -> Option<u32> {
    let mut conn = openssh_mux_client::Connection::connect(ctl).await.ok()?;
    conn.send_alive_check().await.ok().map(|p| p.get())
}

/// Whether the master still answers on its control socket.
pub async fn is_alive(ctl: &Path) -> bool {
    master_pid(ctl).await.is_some()
}

/// Ask the master to stop (it exits once its sessions end), then make sure by PID.
pub async fn close(master: &Master) {
    if let Ok(mut conn) = openssh_mux_client::Connection::connect(&master.ctl).await {
        let _ = conn.request_stop_listening().await;
    }
    if let Some(pid) = master.pid {
        terminate_pid(pid, &master.ctl, Duration::from_millis(500)).await;
    }
    let _ = std::fs::remove_file(master.ctl.with_extension("log"));
}

/// Whether `pid` is a live process. A master is a daemon (`ssh -f`), reaped by init; where init
/// is slow to reap, an exited master lingers as a zombie, which `kill(pid, 0)` still accepts.
/// Only a live process whose command line names our control socket is ours to signal: a PID
/// alone could have been reused by another process since the master exited.
pub fn ours(pid: u32, ctl: &Path) -> bool {
    running(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
            let ctl = ctl.as_os_str().as_encoded_bytes();
            cmd.split(|b| *b == 0).any(|arg| arg == ctl)
        })
}

fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// SIGTERM `pid` (a master we launched), SIGKILL if it is still there after `grace`.
pub async fn terminate_pid(pid: u32, ctl: &Path, grace: Duration) {
    if !ours(pid, ctl) {
        return;
    }
    let Ok(raw) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a PID we obtained from our own master; no memory is involved.
    if unsafe { libc::kill(raw, libc::SIGTERM) } != 0 {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !running(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = raw;
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Synchronous best-effort stop for `Drop` paths (no runtime needed).
pub fn terminate_pid_now(pid: u32, ctl: &Path) {
    if !ours(pid, ctl) {
        return;
    }
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on a master PID we launched.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_openssh_diagnostics() {
        let cases = [
            (
                "ssh: connect to host 10.0.0.9 port 22: Connection refused",
                Status::Unreachable,
            ),
            (
                "Connection timed out during banner exchange",
                Status::Unreachable,
            ),
            (
                "ssh: connect to host x port 22: No route to host",
                Status::Unreachable,
            ),
            (
                "ssh: Could not resolve hostname nope: Name or service not known",
                Status::Unreachable,
            ),
            ("root@h: Permission denied (publickey).", Status::AuthFailed),
            (
                "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.",
                Status::HostKeyMismatch,
            ),
            (
                "No ED25519 host key is known for h and you have requested strict checking.\nHost key verification failed.",
                Status::HostKeyMismatch,
            ),
            ("something odd", Status::Error),
        ];
        for (log, want) in cases {
            assert_eq!(classify_ssh_error(log), want, "{log}");
        }
    }

    #[test]
    fn summary_keeps_the_last_lines_without_banners() {
        let log = "@@@@@\nWARNING\n\nline a\nline b\nHost key verification failed.\n";
        assert_eq!(
            summarize(log),
            "line a | line b | Host key verification failed."
        );
        assert_eq!(summarize(""), "ssh exited without a diagnostic");
    }
}
