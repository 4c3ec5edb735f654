//! Per-host results of a fan-out. Failure on a host is data here, never an error.

use std::time::Duration;

use serde::Serialize;

/// What happened on one host. Transport outcomes (`unreachable`, `auth_failed`,
/// `host_key_mismatch`) are kept apart from command outcomes so callers never mistake a dead
/// node for a failing test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The command ran and exited 0.
    Ok,
    /// The command ran and exited non-zero.
    ExitNonzero,
    /// The remote command was ended by a signal.
    Signal,
    /// The call's total timeout expired; the remote process group was killed.
    Timeout,
    /// No output for the inactivity timeout; the remote process group was killed.
    InactivityTimeout,
    /// No SSH connection: refused, no route, no banner, name not resolved, connect timeout.
    Unreachable,
    /// The server refused every offered credential.
    AuthFailed,
    /// The server's host key is unknown or differs from known_hosts (strict policy).
    HostKeyMismatch,
    /// The caller cancelled (Ctrl-C); the remote process group was killed.
    Cancelled,
    /// Anything else (local I/O failure, connection lost mid-command, ...); see `error`.
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::ExitNonzero => "exit_nonzero",
            Status::Signal => "signal",
            Status::Timeout => "timeout",
            Status::InactivityTimeout => "inactivity_timeout",
            Status::Unreachable => "unreachable",
            Status::AuthFailed => "auth_failed",
            Status::HostKeyMismatch => "host_key_mismatch",
            Status::Cancelled => "cancelled",
            Status::Error => "error",
        }
    }
}

/// One host's outcome. `exit_code` is -1 when the command produced none (CVS's convention for
/// "unknown or aborted").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResult {
    pub host: String,
    pub status: Status,
    pub exit_code: i32,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
    pub error: Option<String>,
}

impl HostResult {
    /// A result for a host where the command never produced an exit code.
    pub fn failed(
        host: &str,
        status: Status,
        error: impl Into<String>,
        duration: Duration,
    ) -> Self {
        HostResult {
            host: host.to_owned(),
            status,
            exit_code: -1,
            signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            duration,
            error: Some(error.into()),
        }
    }
}

/// Hosts that produced the same (stdout, status, exit code): ClusterShell's `clubak` idea, so
/// 1000 identical answers read as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub hosts: Vec<String>,
    pub status: Status,
    pub exit_code: i32,
    pub stdout: Vec<u8>,
}

/// Group results by (stdout, status, exit code), groups in order of first appearance and hosts
/// in result order.
pub fn fold(results: &[HostResult]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: std::collections::HashMap<(&[u8], Status, i32), usize> =
        std::collections::HashMap::new();
    for r in results {
        let key = (r.stdout.as_slice(), r.status, r.exit_code);
        match index.get(&key) {
            Some(&i) => groups[i].hosts.push(r.host.clone()),
            None => {
                index.insert(key, groups.len());
                groups.push(Group {
                    hosts: vec![r.host.clone()],
                    status: r.status,
                    exit_code: r.exit_code,
                    stdout: r.stdout.clone(),
                });
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host: &str, out: &str, status: Status, code: i32) -> HostResult {
        HostResult {
            host: host.into(),
            status,
            exit_code: code,
            signal: None,
            stdout: out.as_bytes().to_vec(),
            stderr: Vec::new(),
            duration: Duration::ZERO,
            error: None,
        }
    }

    #[test]
    fn fold_groups_identical_outputs_in_first_seen_order() {
        let results = [
            r("h1", "a", Status::Ok, 0),
            r("h2", "b", Status::Ok, 0),
            r("h3", "a", Status::Ok, 0),
            r("h4", "a", Status::ExitNonzero, 1),
            r("h5", "", Status::Unreachable, -1),
            r("h6", "b", Status::Ok, 0),
        ];
        let groups = fold(&results);
        let hosts: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.hosts.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            hosts,
            vec![vec!["h1", "h3"], vec!["h2", "h6"], vec!["h4"], vec!["h5"]]
        );
        assert_eq!(groups[2].exit_code, 1);
        assert_eq!(groups[3].status, Status::Unreachable);
    }

    #[test]
    fn status_names() {
        assert_eq!(Status::HostKeyMismatch.as_str(), "host_key_mismatch");
        assert_eq!(Status::InactivityTimeout.as_str(), "inactivity_timeout");
    }
}
