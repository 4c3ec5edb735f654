//! Persistent masters: control sockets in one per-user directory that later processes
//! re-attach to. A socket's name is a hash of everything that changes what the connection is,
//! so a process with other settings never finds (let alone uses) another configuration's
//! master; a sidecar JSON file records the same inputs for `disconnect` and for a human.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::master;
use super::options::{ConnectOptions, HostKeyPolicy};
use crate::config::CONTROL_DIR_ENV;
use crate::error::{Error, Result};

/// Persistent connections of a cluster: masters stay up `idle` after their last use, with
/// their sockets in `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persist {
    pub idle: Duration,
    pub dir: PathBuf,
}

/// `sun_path` is 108 bytes; ssh binds `<ControlPath>.<16 random chars>` first and renames it,
/// so the socket name plus 17 bytes must fit with the terminating NUL.
const SUN_PATH: usize = 108;
const SOCKET_NAME_LEN: usize = "/p-".len() + 16 + 17 + 1;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The directory persistent sockets live in when the caller names none:
/// `$CVS_CORE_CONTROL_DIR`, else `$XDG_RUNTIME_DIR/cvs-core` (a per-user tmpfs that logind
/// empties at logout), else `/tmp/cvs-core-<uid>`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CONTROL_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .map(|p| p.join("cvs-core"))
        .filter(|p| p.as_os_str().len() + SOCKET_NAME_LEN <= SUN_PATH)
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/cvs-core-{}", euid())))
}

/// Create `dir` (0700) if it does not exist, and refuse it unless it is a real directory
/// (not a symlink) owned by this user that nobody else can enter: anyone who can reach a
/// control socket can run commands as the user on that host.
pub fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "control directory {} must be an absolute path",
            dir.display()
        )));
    }
    if dir.as_os_str().len() + SOCKET_NAME_LEN > SUN_PATH {
        return Err(Error::InvalidArgument(format!(
            "control directory {} is too long for a control socket ({} bytes at most)",
            dir.display(),
            SUN_PATH - SOCKET_NAME_LEN
        )));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "cannot create control directory {}: {e}",
                dir.display()
            )));
        }
    }
    check_dir(dir)?;
    Ok(dir.to_path_buf())
}

/// [`check_dir_meta`] on what `lstat(dir)` says (a symlink is never followed).
fn check_dir(dir: &Path) -> Result<()> {
    let meta = dir
        .symlink_metadata()
        .map_err(|e| Error::InvalidArgument(format!("control directory {}: {e}", dir.display())))?;
    check_dir_meta(dir, meta.is_dir(), meta.uid(), meta.mode(), euid())
}

/// The checks of [`prepare_dir`] on what `lstat` said (separate so every refusal is tested).
fn check_dir_meta(dir: &Path, is_dir: bool, uid: u32, mode: u32, me: u32) -> Result<()> {
    let d = dir.display();
    if !is_dir {
        return Err(Error::InvalidArgument(format!(
            "control directory {d} is not a directory (a symlink or a file is never followed)"
        )));
    }
    if uid != me {
        return Err(Error::InvalidArgument(format!(
            "control directory {d} is owned by uid {uid}, not by this user (uid {me}): another \
             user could reach its sockets; use a directory of your own"
        )));
    }
    if mode & 0o077 != 0 {
        return Err(Error::InvalidArgument(format!(
            "control directory {d} has mode {:04o}: group and others must have no access \
             (chmod 700 {d})",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// A file's identity: a replaced or edited key or ssh_config is another connection.
fn file_id(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{}:{}:{}.{}:{}",
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.size()
        ),
        Err(_) => "missing".to_owned(),
    }
}

/// Everything that changes what a connection to `host` is, in a fixed order. The password is
/// not part of it (a hash of a weak password next to its other inputs could be brute-forced);
/// whether one is used is.
pub fn identity(opts: &ConnectOptions, host: &str) -> Vec<(&'static str, String)> {
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let id = |p: &Option<PathBuf>| p.as_ref().map(|p| file_id(p));
    let policy = match opts.host_key_policy {
        HostKeyPolicy::Strict => "strict",
        HostKeyPolicy::AcceptNew => "accept-new",
        HostKeyPolicy::Off => "off",
    };
    vec![
        ("version", "1".to_owned()),
        ("uid", euid().to_string()),
        ("host", host.to_owned()),
        ("user", opts.user.clone().unwrap_or_default()),
        ("port", opts.port.map(|p| p.to_string()).unwrap_or_default()),
        ("key", path(&opts.key).unwrap_or_default()),
        ("key_file", id(&opts.key).unwrap_or_default()),
        ("ssh_config", path(&opts.ssh_config).unwrap_or_default()),
        ("ssh_config_file", id(&opts.ssh_config).unwrap_or_default()),
        ("known_hosts", path(&opts.known_hosts).unwrap_or_default()),
        ("host_key_policy", policy.to_owned()),
        ("jump_host", opts.jump_host.clone().unwrap_or_default()),
        ("ssh_program", opts.ssh_program.display().to_string()),
        (
            "auth",
            if opts.password.is_some() {
                "password"
            } else {
                "key"
            }
            .to_owned(),
        ),
    ]
}

/// The identity as the sidecar's JSON text (stable: fields in [`identity`] order).
pub fn identity_json(fields: &[(&'static str, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// `p-` and 16 hex digits of the identity's SHA-256: short whatever the host name.
pub fn socket_name(identity_json: &str) -> String {
    let digest = Sha256::digest(identity_json.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("p-{hex}")
}

/// Whether `name` is a persistent socket's name.
fn is_socket_name(name: &str) -> bool {
    name.strip_prefix("p-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An exclusive `flock` on `<ctl>.lock`, so two processes never launch a master on one socket
/// (the loser's `ssh -M` would find the socket taken and stay up as a plain connection).
pub struct SocketLock {
    _file: std::fs::File,
}

impl SocketLock {
    pub async fn acquire(ctl: &Path, within: Duration) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(ctl.with_extension("lock"))?;
        let deadline = Instant::now() + within;
        loop {
            // SAFETY: flock on a descriptor we own; non-blocking, so the runtime never stalls.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(SocketLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err);
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "another process held {} for {}s",
                        ctl.with_extension("lock").display(),
                        within.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Write the sidecar atomically (a reader never sees half of it), readable by the user only.
pub fn write_sidecar(ctl: &Path, json: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = ctl.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(json.as_bytes())?;
    drop(f);
    std::fs::rename(tmp, ctl.with_extension("json"))
}

/// Remove a socket and its companions (not the lock file: another process may be waiting on
/// it, and an empty lock file is harmless).
pub fn remove_files(ctl: &Path) {
    for p in [
        ctl.to_path_buf(),
        ctl.with_extension("json"),
        ctl.with_extension("log"),
        ctl.with_extension("pw"),
    ] {
        let _ = std::fs::remove_file(p);
    }
}

/// What re-attaching to `ctl` found.
pub enum Found {
    /// A live master of this identity, with its PID.
    Live(u32),
    /// Nothing usable: no socket, a dead master, or another identity's (all cleaned up).
    Nothing,
    /// A live master cvs-core cannot prove it started (its command line does not name the
    /// socket): never used, never stopped.
    Foreign(u32),
}

/// Look at the socket `ctl` for a master of `identity_json`. A dead socket, or one whose
/// sidecar says another identity (or nothing), is cleaned up and never used; a live master of
/// another identity is stopped only when it is provably ours (its command line names `ctl`).
pub async fn inspect(ctl: &Path, identity_json: &str) -> Found {
    if ctl.symlink_metadata().is_err() {
        remove_files(ctl);
        return Found::Nothing;
    }
    let recorded = std::fs::read_to_string(ctl.with_extension("json")).ok();
    let pid = master::master_pid(ctl).await;
    match (pid, recorded.as_deref() == Some(identity_json)) {
        (Some(pid), true) => Found::Live(pid),
        (Some(pid), false) => {
            if !stop(ctl, pid).await {
                return Found::Foreign(pid);
            }
            remove_files(ctl);
            Found::Nothing
        }
        (None, _) => {
            remove_files(ctl);
            Found::Nothing
        }
    }
}

/// End the master `pid` on `ctl` if its command line names `ctl` (never a master we cannot
/// prove is ours): ask it to stop listening, then SIGTERM (SIGKILL after a grace). Whether it
/// was ours.
async fn stop(ctl: &Path, pid: u32) -> bool {
    if !master::ours(pid, ctl) {
        return false;
    }
    if let Ok(mut conn) = openssh_mux_client::Connection::connect(ctl).await {
        let _ = conn.request_stop_listening().await;
    }
    master::terminate_pid(pid, ctl, Duration::from_millis(500)).await;
    true
}

/// A persistent master `disconnect` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub host: String,
    pub pid: u32,
}

/// End the persistent masters in `dir` (of `hosts` only, when given): those with a socket
/// there, and any live ssh master of this user whose command line names a socket there (one
/// whose socket was removed under it). Their files are removed. Returns what was ended.
pub async fn disconnect(dir: &Path, hosts: Option<&[String]>) -> Result<Vec<Ended>> {
    let wanted = |h: &str| hosts.is_none_or(|hs| hs.iter().any(|x| x == h));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "cannot read control directory {}: {e}",
                dir.display()
            )));
        }
    };
    check_dir(dir)?;
    // Ended concurrently: a thousand masters one after another would take minutes.
    let mut stopping = tokio::task::JoinSet::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| is_socket_name(n)) else {
            continue;
        };
        let ctl = dir.join(name);
        let host = std::fs::read_to_string(ctl.with_extension("json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("host").and_then(|h| h.as_str()).map(str::to_owned));
        // A socket without a readable sidecar cannot be matched to a host: only a
        // disconnect of every host ends it.
        if !host.as_deref().map_or(hosts.is_none(), wanted) {
            continue;
        }
        stopping.spawn(async move {
            match master::master_pid(&ctl).await {
                Some(pid) => {
                    if !stop(&ctl, pid).await {
                        return None;
                    }
                    remove_files(&ctl);
                    Some(Ended {
                        host: host.unwrap_or_default(),
                        pid,
                    })
                }
                None => {
                    remove_files(&ctl);
                    None
                }
            }
        });
    }
    let mut ended = Vec::new();
    while let Some(done) = stopping.join_next().await {
        if let Ok(Some(e)) = done {
            ended.push(e);
        }
    }
    // Masters whose socket is gone (removed by hand, or a crash between launch and sidecar)
    // are found by their command line: `-S <dir>/p-...` and the host as the last argument.
    let stopped: Vec<u32> = ended.iter().map(|e| e.pid).collect();
    let orphans = master::term_masters_under(&dir.join("p-"), |pid, host| {
        wanted(host) && !stopped.contains(&pid)
    });
    ended.extend(orphans.into_iter().map(|(pid, host)| Ended { host, pid }));
    ended.sort_by(|a, b| a.host.cmp(&b.host).then(a.pid.cmp(&b.pid)));
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_changes_with_every_input() {
        let base = ConnectOptions::default();
        let name = |o: &ConnectOptions, h: &str| socket_name(&identity_json(&identity(o, h)));
        let reference = name(&base, "h1");
        assert_eq!(reference, name(&base, "h1"), "stable");
        assert_eq!(reference.len(), 18);
        assert!(is_socket_name(&reference));
        let variants = [
            ConnectOptions {
                user: Some("u".into()),
                ..base.clone()
            },
            ConnectOptions {
                port: Some(2222),
                ..base.clone()
            },
            ConnectOptions {
                key: Some("/k".into()),
                ..base.clone()
            },
            ConnectOptions {
                ssh_config: Some("/c".into()),
                ..base.clone()
            },
            ConnectOptions {
                known_hosts: Some("/kh".into()),
                ..base.clone()
            },
            ConnectOptions {
                host_key_policy: HostKeyPolicy::AcceptNew,
                ..base.clone()
            },
            ConnectOptions {
                jump_host: Some("bastion".into()),
                ..base.clone()
            },
            ConnectOptions {
                password: Some(super::super::options::Secret::new("pw".into())),
                ..base.clone()
            },
        ];
        let mut seen = std::collections::HashSet::from([reference.clone()]);
        for v in &variants {
            assert!(seen.insert(name(v, "h1")), "{v:?} collides");
        }
        assert_ne!(reference, name(&base, "h2"));
        // The secret is not an input (only that one is used).
        let a = ConnectOptions {
            password: Some(super::super::options::Secret::new("one".into())),
            ..base.clone()
        };
        let b = ConnectOptions {
            password: Some(super::super::options::Secret::new("two".into())),
            ..base.clone()
        };
        assert_eq!(name(&a, "h"), name(&b, "h"));
        assert!(!identity_json(&identity(&a, "h")).contains("one"));
    }

    #[test]
    fn directory_refusals_name_the_problem() {
        let d = Path::new("/run/x");
        let err = |is_dir, uid, mode| {
            check_dir_meta(d, is_dir, uid, mode, 1000)
                .unwrap_err()
                .to_string()
        };
        assert!(err(false, 1000, 0o700).contains("not a directory"));
        assert!(err(true, 0, 0o700).contains("owned by uid 0"));
        let e = err(true, 1000, 0o755);
        assert!(
            e.contains("mode 0755") && e.contains("chmod 700 /run/x"),
            "{e}"
        );
        assert!(err(true, 1000, 0o710).contains("mode 0710"));
        check_dir_meta(d, true, 1000, 0o700, 1000).unwrap();
    }

    #[test]
    fn long_or_relative_directories_are_refused() {
        let long = PathBuf::from(format!("/{}", "x".repeat(80)));
        assert!(
            prepare_dir(&long)
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        assert!(
            prepare_dir(Path::new("rel"))
                .unwrap_err()
                .to_string()
                .contains("absolute")
        );
    }
}
