//! Pure container-lifetime decisions: probe observations in, a decision out.
//!
//! Every branch here decides whether a host's container, and with it a persistent overlay that
//! may hold hours of setup, gets `docker rm -f`'d. Keeping the decision free of I/O lets the
//! whole table of lifetimes × probe outcomes be tested exhaustively; the I/O layer only runs the
//! probes and carries out what is decided here.
//!
//! Messages are the log lines CVS prints for the same outcome (users grep for them), except
//! where CVS was unsafe: a failed probe is never read as "not running" (§3.3 of the contract).

use std::collections::{HashMap, HashSet};

use crate::config::Lifetime;
use crate::config::pyrepr::{list_repr, str_repr};
use crate::error::{Error, Result};

pub mod observe;
pub mod plan;

#[cfg(test)]
mod tests;

/// One host's answer to the `docker ps` running probe (CVS's is_running shape).
///
/// `exit_code` is kept next to `running` because "not running" and "could not ask" lead to
/// opposite actions for a persistent container: launch versus refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    pub running: bool,
    pub exit_code: i64,
    /// What the probe printed, trimmed; CVS shows it to explain why a host is not running.
    pub name: String,
}

/// One host's answer to the image-SHA probe (CVS's image_sha_status shape; "" = unreadable).
///
/// Both SHAs are needed: the container's tells whether hosts agree with each other (skew), the
/// local tag's tells whether the running overlay is older than the image the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageState {
    pub container_sha: String,
    pub image_sha: String,
}

/// The outcome of [`decide_setup`]. An enum rather than a bool so callers and logs can tell
/// a refusal (the operator must act) from a verification failure or a request for more data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// no_launch: the container runs everywhere.
    VerifyOk,
    /// no_launch: some host lacks it; CVS never starts it for the user in this mode.
    VerifyFailed,
    /// Start fresh containers on `missing_hosts` (this removes any old one of the same name).
    Launch,
    /// persistent: reuse the containers running everywhere.
    Attach,
    /// persistent: running on some hosts only; relaunching would destroy their overlay.
    RefusePartial,
    /// persistent: some host could not be asked, so acting could destroy a live overlay.
    RefuseProbeFailed,
    /// persistent: hosts run different images, so results would not be comparable.
    RefuseImageSkew,
    /// persistent: a host's image SHA is unknown, so consistency cannot be verified.
    RefuseUnreadableSha,
    /// persistent, all running: call again with the image-SHA probe results. The probe costs
    /// an SSH round trip, so it is only run when its answer can change the decision.
    NeedImageStatus,
    /// persistent: the running containers were created from another configuration (image, run
    /// arguments, setup script or sshd port); attaching would run tests in the wrong
    /// environment, recreating would destroy the overlay, so only an explicit opt-in recreates.
    RefuseDrift,
}

impl DecisionKind {
    /// Stable snake_case name, for the Python binding and for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::VerifyOk => "verify_ok",
            DecisionKind::VerifyFailed => "verify_failed",
            DecisionKind::Launch => "launch",
            DecisionKind::Attach => "attach",
            DecisionKind::RefusePartial => "refuse_partial",
            DecisionKind::RefuseProbeFailed => "refuse_probe_failed",
            DecisionKind::RefuseImageSkew => "refuse_image_skew",
            DecisionKind::RefuseUnreadableSha => "refuse_unreadable_sha",
            DecisionKind::NeedImageStatus => "need_image_status",
            DecisionKind::RefuseDrift => "refuse_drift",
        }
    }

    /// Whether setup may go on (CVS's `setup_containers` returning True). `NeedImageStatus` is
    /// not a success: the caller must probe and decide again before using the containers.
    pub fn proceeds(self) -> bool {
        matches!(
            self,
            DecisionKind::VerifyOk | DecisionKind::Launch | DecisionKind::Attach
        )
    }
}

/// A decision plus everything needed to log and act on it, so the caller never re-derives
/// host sets (and never disagrees with the decision about them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupDecision {
    pub kind: DecisionKind,
    /// Probe exit 0 and the container running.
    pub running_hosts: Vec<String>,
    /// Probe exit 0 and the container not running; for per_run, every host (all are launched).
    pub missing_hosts: Vec<String>,
    /// Probe failed (exit code != 0) or no answer for an expected host.
    pub failed_hosts: Vec<String>,
    /// Attach only: hosts whose running container is not the local image tag's SHA.
    pub stale_hosts: Vec<String>,
    /// One human line: the log line CVS would print for this outcome.
    pub message: String,
    /// Non-fatal findings to log at WARNING, e.g. one stale-image warning per stale host.
    pub warnings: Vec<String>,
}

/// What [`decide_setup`] looks at. Slices of pairs rather than maps keep host order, which
/// every message and partition follows.
#[derive(Debug, Clone, Copy)]
pub struct SetupInput<'a> {
    pub lifetime: Lifetime,
    /// The running probe per host, in host order.
    pub running: &'a [(String, ProbeState)],
    /// The image-SHA probe per host; `None` if it has not been run yet.
    pub image_status: Option<&'a [(String, ImageState)]>,
    /// Expected hosts. When given, a host absent from `running` is a failed probe (silence is
    /// not "not running"), extra hosts in `running` are ignored, and this order is reported.
    pub hosts: Option<&'a [String]>,
    pub container_name: &'a str,
    /// The image tag from the config, quoted in stale-image warnings.
    pub image: &'a str,
}

/// How a single host's probe is read. A probe that failed, or never answered, says nothing
/// about the container, so it gets its own class instead of defaulting to "missing".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostClass {
    Running,
    Missing,
    Failed,
}

fn classify(probe: Option<&ProbeState>) -> HostClass {
    match probe {
        Some(p) if p.exit_code == 0 && p.running => HostClass::Running,
        Some(p) if p.exit_code == 0 => HostClass::Missing,
        _ => HostClass::Failed,
    }
}

/// Index a per-host table by host. Two answers for one host are ambiguous (which one is
/// true?); Python dicts cannot produce them, so seeing one means the caller built the table
/// wrong. Hashing keeps large clusters linear.
fn index_by_host<'a, T>(what: &str, table: &'a [(String, T)]) -> Result<HashMap<&'a str, &'a T>> {
    let mut index = HashMap::with_capacity(table.len());
    for (host, value) in table {
        if index.insert(host.as_str(), value).is_some() {
            return Err(duplicate(host, what));
        }
    }
    Ok(index)
}

fn duplicate(host: &str, what: &str) -> Error {
    Error::InvalidArgument(format!(
        "host {} appears more than once in {what}",
        str_repr(host)
    ))
}

/// Python's `s[:19]`: CVS prints SHAs cut to `sha256:` plus 12 hex digits. Counted in chars,
/// as Python does, so a garbled probe output can never split a UTF-8 sequence.
fn sha_prefix(s: &str) -> &str {
    s.char_indices().nth(19).map_or(s, |(i, _)| &s[..i])
}

/// Python's `str.strip()` with no argument: Unicode whitespace plus the ASCII separators
/// U+001C..U+001F, which Rust's `trim` keeps. CVS compares the stripped output, so must we.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Decide what setup does for the configured lifetime, given the probes. Per-host trouble is
/// data in the decision, not an error; only a caller mistake (no hosts, duplicate hosts) errs.
pub fn decide_setup(input: &SetupInput<'_>) -> Result<SetupDecision> {
    let probes = index_by_host("the running probe", input.running)?;
    let images = input
        .image_status
        .map(|status| index_by_host("the image status", status))
        .transpose()?;
    let observed: Vec<(&str, Option<&ProbeState>)> = match input.hosts {
        Some(hosts) => {
            let mut seen = HashSet::with_capacity(hosts.len());
            if let Some(h) = hosts.iter().find(|h| !seen.insert(h.as_str())) {
                return Err(duplicate(h, "the expected hosts"));
            }
            hosts
                .iter()
                .map(|h| (h.as_str(), probes.get(h.as_str()).copied()))
                .collect()
        }
        None => input
            .running
            .iter()
            .map(|(h, p)| (h.as_str(), Some(p)))
            .collect(),
    };
    if observed.is_empty() {
        return Err(Error::InvalidArgument("no hosts to decide for".into()));
    }

    let mut running = Vec::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    for &(host, probe) in &observed {
        match classify(probe) {
            HostClass::Running => running.push(host.to_owned()),
            HostClass::Missing => missing.push(host.to_owned()),
            HostClass::Failed => failed.push(host.to_owned()),
        }
    }
    let decision = |kind, message: String| SetupDecision {
        kind,
        running_hosts: running.clone(),
        missing_hosts: missing.clone(),
        failed_hosts: failed.clone(),
        stale_hosts: Vec::new(),
        message,
        warnings: Vec::new(),
    };
    let name = input.container_name;
    let n = observed.len();

    match input.lifetime {
        Lifetime::NoLaunch => Ok(decide_verify(&observed, name, decision)),
        Lifetime::PerRun => {
            // per_run replaces whatever is there, so every host is launched on; the partition
            // of running/failed is kept only so the caller can log what gets replaced.
            let mut d = decision(
                DecisionKind::Launch,
                format!("Launching per_run container '{name}' on {n} hosts"),
            );
            d.missing_hosts = observed.iter().map(|(h, _)| (*h).to_owned()).collect();
            Ok(d)
        }
        Lifetime::Persistent => {
            if !failed.is_empty() {
                return Ok(decision(
                    DecisionKind::RefuseProbeFailed,
                    format!(
                        "Cannot determine state of persistent container '{name}' on {} (probe \
                         failed: SSH/sudo/docker error, timeout, or host unreachable). Refusing \
                         to act on an untrustworthy probe -- resolve host/daemon health and rerun.",
                        list_repr(&failed)
                    ),
                ));
            }
            if !running.is_empty() && !missing.is_empty() {
                return Ok(decision(
                    DecisionKind::RefusePartial,
                    format!(
                        "Persistent container '{name}' is running on {} but missing on {}. \
                         Refusing to auto-relaunch: relaunching would force-remove the container \
                         on the running hosts and destroy their overlay. Start it on the missing \
                         hosts, or remove it everywhere, then rerun.",
                        list_repr(&running),
                        list_repr(&missing)
                    ),
                ));
            }
            if running.is_empty() {
                return Ok(decision(
                    DecisionKind::Launch,
                    "Persistent container not running on any host, launching...".into(),
                ));
            }
            let Some(images) = images else {
                return Ok(decision(
                    DecisionKind::NeedImageStatus,
                    format!(
                        "Persistent container '{name}' is running on all {n} hosts; image status \
                         is needed to verify it"
                    ),
                ));
            };
            Ok(decide_attach(
                &running,
                &images,
                name,
                input.image,
                decision,
            ))
        }
    }
}

/// no_launch: the user owns the containers, so the only question is whether they all run.
fn decide_verify(
    observed: &[(&str, Option<&ProbeState>)],
    name: &str,
    decision: impl Fn(DecisionKind, String) -> SetupDecision,
) -> SetupDecision {
    let failures: Vec<String> = observed
        .iter()
        .filter_map(|&(host, probe)| match probe {
            None => Some(format!("{host} (exit code -1)")),
            Some(p) if p.exit_code != 0 => Some(format!("{host} (exit code {})", p.exit_code)),
            Some(p) if !p.running => Some(format!(
                "{host} (container not running, found: '{}')",
                p.name
            )),
            Some(_) => None,
        })
        .collect();
    if failures.is_empty() {
        decision(
            DecisionKind::VerifyOk,
            format!(
                "Container '{name}' is running on all {} hosts",
                observed.len()
            ),
        )
    } else {
        decision(
            DecisionKind::VerifyFailed,
            format!(
                "Container '{name}' not running on hosts: {}",
                list_repr(&failures)
            ),
        )
    }
}

/// persistent, running everywhere: attach only if every host's image is known and the same,
/// since tests comparing hosts running different images give meaningless results.
fn decide_attach(
    hosts: &[String],
    images: &HashMap<&str, &ImageState>,
    name: &str,
    image: &str,
    decision: impl Fn(DecisionKind, String) -> SetupDecision,
) -> SetupDecision {
    let states: Vec<(&String, Option<&ImageState>)> = hosts
        .iter()
        .map(|h| (h, images.get(h.as_str()).copied()))
        .collect();
    let unreadable: Vec<&str> = states
        .iter()
        .filter(|(_, s)| s.is_none_or(|s| s.container_sha.is_empty()))
        .map(|(h, _)| h.as_str())
        .collect();
    if !unreadable.is_empty() {
        return decision(
            DecisionKind::RefuseUnreadableSha,
            format!(
                "Could not read the running image SHA for container '{name}' on {}; cannot \
                 verify image consistency across hosts",
                list_repr(&unreadable)
            ),
        );
    }
    // Every host has a readable state past the check above.
    let states: Vec<(&String, &ImageState)> = states
        .into_iter()
        .filter_map(|(h, s)| Some((h, s?)))
        .collect();

    let mut distinct: Vec<&str> = Vec::new();
    for (_, s) in &states {
        if !distinct.contains(&s.container_sha.as_str()) {
            distinct.push(&s.container_sha);
        }
    }
    if distinct.len() > 1 {
        let entries: Vec<String> = states
            .iter()
            .map(|(h, s)| {
                format!(
                    "{}: {}",
                    str_repr(h),
                    str_repr(sha_prefix(&s.container_sha))
                )
            })
            .collect();
        return decision(
            DecisionKind::RefuseImageSkew,
            format!(
                "Cross-host image SHA skew for container '{name}': hosts are running different \
                 images {{{}}}",
                entries.join(", ")
            ),
        );
    }

    let mut d = decision(
        DecisionKind::Attach,
        format!(
            "Attaching to persistent container '{name}' running on all {} hosts",
            hosts.len()
        ),
    );
    // Stale is a warning, not a refusal: the overlay is what the user chose to keep, and
    // replacing it is their call.
    for (host, s) in states {
        if s.container_sha != s.image_sha {
            d.stale_hosts.push(host.clone());
            d.warnings.push(format!(
                "Persistent container '{name}' on {host} runs image {} but local '{image}' is {}; \
                 overlay may be stale",
                sha_prefix(&s.container_sha),
                sha_prefix(&s.image_sha)
            ));
        }
    }
    d
}

/// Whether teardown removes the containers. Only per_run owns them; removing a no_launch or
/// persistent container would destroy something the user keeps across runs. A missing id
/// means setup never launched, so there is nothing of ours to remove.
pub fn decide_teardown(lifetime: Lifetime, container_id: Option<&str>) -> bool {
    lifetime == Lifetime::PerRun && container_id.is_some_and(|id| !id.is_empty())
}

/// Hosts whose pgrep precheck exit code != 0, in order, so sshd is set up only where it is not
/// already up (CVS's idempotent precheck). Any non-zero counts, not just pgrep's 1 for "no
/// match": a precheck that could not run cannot show that sshd is up.
pub fn hosts_needing_sshd(precheck: &[(String, i64)]) -> Vec<String> {
    precheck
        .iter()
        .filter(|(_, code)| *code != 0)
        .map(|(h, _)| h.clone())
        .collect()
}

/// Read the `docker ps --filter name=^<n>$` probe exactly as CVS does, so both agree on what
/// "running" means: the command succeeded and printed nothing but the name. Extra stdout (a
/// sudo warning, say) makes a host "not running" with exit 0; if that happens on every host a
/// persistent decision becomes Launch, so the I/O layer must keep such noise out of stdout.
pub fn parse_is_running(expected_name: &str, output: &str, exit_code: i64) -> ProbeState {
    let name = py_strip(output);
    ProbeState {
        running: exit_code == 0 && name == expected_name,
        exit_code,
        name: name.to_owned(),
    }
}

/// Read the `"<container sha>|<image sha>"` probe as CVS does. Its exit code is ignored by CVS
/// because each half is a `$(... 2>/dev/null)` that prints "" when unreadable; "" is what the
/// decision treats as unreadable, so parsing never fails.
pub fn parse_image_sha(output: &str) -> ImageState {
    let mut parts = py_strip(output).split('|').map(py_strip);
    let container_sha = parts.next().unwrap_or_default().to_owned();
    let image_sha = parts.next().unwrap_or_default().to_owned();
    ImageState {
        container_sha,
        image_sha,
    }
}
