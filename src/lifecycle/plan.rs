//! The native driver's setup plan: the container-lifetime decision refined with what one probe
//! shows (stopped containers, local image agreement before a launch, configuration drift),
//! expressed as one action per host with its reason. Pure: observations in, plan out.

use super::observe::{ContainerInfo, ContainerState, Observation};
use super::{DecisionKind, ImageState, ProbeState, SetupInput, decide_setup};
use crate::config::Lifetime;
use crate::config::pyrepr::{list_repr, str_repr};

/// What setup does on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAction {
    /// Use the running container as it is.
    Attach,
    /// `docker start` the existing, stopped container (its overlay is kept).
    Start,
    /// Launch a fresh container (none exists under the name).
    Launch,
    /// Remove the existing container, then launch a fresh one (per_run, or drift with opt-in).
    Recreate,
    /// no_launch: only check that it runs.
    Verify,
    /// Nothing can be done on this host (see the plan's refusal).
    Refuse,
}

impl HostAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HostAction::Attach => "attach",
            HostAction::Start => "start",
            HostAction::Launch => "launch",
            HostAction::Recreate => "recreate",
            HostAction::Verify => "verify",
            HostAction::Refuse => "refuse",
        }
    }

    /// Whether the action leaves a freshly created container that must be provisioned.
    pub fn creates(self) -> bool {
        matches!(self, HostAction::Launch | HostAction::Recreate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub host: String,
    pub action: HostAction,
    pub reason: String,
    /// Attach only: the container's provisioning completed (another container of its run holds
    /// the record) but its own record write was interrupted; setup writes it.
    pub restore_record: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub kind: DecisionKind,
    pub hosts: Vec<HostPlan>,
    /// One human line.
    pub message: String,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn proceeds(&self) -> bool {
        self.kind.proceeds()
    }
}

/// What the configuration asks for.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    pub lifetime: Lifetime,
    pub name: &'a str,
    pub image: &'a str,
    /// `cvs.config-hash` the configuration gives a container (see `config_hash`).
    pub config_hash: &'a str,
    /// Explicit opt-in: recreate persistent containers whose configuration drifted.
    pub recreate_on_drift: bool,
}

fn short(sha: &str) -> &str {
    sha.char_indices().nth(19).map_or(sha, |(i, _)| &sha[..i])
}

fn plan_all(
    hosts: &[(String, Result<Observation, String>)],
    kind: DecisionKind,
    message: String,
    action: impl Fn(&str, Option<&Observation>) -> (HostAction, String),
) -> Plan {
    Plan {
        kind,
        hosts: hosts
            .iter()
            .map(|(h, o)| {
                let (action, reason) = action(h, o.as_ref().ok());
                HostPlan {
                    host: h.clone(),
                    action,
                    reason,
                    restore_record: false,
                }
            })
            .collect(),
        message,
        warnings: Vec::new(),
    }
}

/// Local image IDs of the tag must agree across the hosts that have it before anything is
/// launched: otherwise "the same image" would run different bits on different nodes.
fn launch_skew(hosts: &[(String, Result<Observation, String>)], image: &str) -> Option<String> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (h, o) in hosts {
        if let Ok(o) = o
            && !o.local_image.is_empty()
        {
            seen.push((h.clone(), o.local_image.as_str()));
        }
    }
    let first = seen.first()?.1;
    if seen.iter().all(|(_, id)| *id == first) {
        return None;
    }
    let pairs: Vec<String> = seen
        .iter()
        .map(|(h, id)| format!("{}: {}", str_repr(h), str_repr(short(id))))
        .collect();
    Some(format!(
        "Local image '{image}' differs across hosts {{{}}}; refusing to launch containers from \
         different images under one tag",
        pairs.join(", ")
    ))
}

/// Plan setup for `desired` from one probe per host (`Err` = the probe failed, with why).
pub fn plan_setup(desired: &Desired<'_>, hosts: &[(String, Result<Observation, String>)]) -> Plan {
    let name = desired.name;
    let failed: Vec<(String, String)> = hosts
        .iter()
        .filter_map(|(h, o)| o.as_ref().err().map(|e| (h.clone(), e.clone())))
        .collect();
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|(h, _)| h.as_str()).collect();
        let kind = if desired.lifetime == Lifetime::NoLaunch {
            DecisionKind::VerifyFailed
        } else {
            DecisionKind::RefuseProbeFailed
        };
        return plan_all(
            hosts,
            kind,
            format!(
                "Cannot determine state of container '{name}' on {} (probe failed: SSH/sudo/docker \
                 error, timeout, or host unreachable). Refusing to act on an untrustworthy probe \
                 -- resolve host/daemon health and rerun.",
                list_repr(&names)
            ),
            |h, _| match failed.iter().find(|(f, _)| f == h) {
                Some((_, why)) => (HostAction::Refuse, format!("probe failed: {why}")),
                None => (HostAction::Refuse, "another host's probe failed".into()),
            },
        );
    }
    let obs: Vec<(&str, &Observation)> = hosts
        .iter()
        .filter_map(|(h, o)| o.as_ref().ok().map(|o| (h.as_str(), o)))
        .collect();
    let state = |o: &Observation| o.container.as_ref().map(|c| c.state());

    match desired.lifetime {
        Lifetime::NoLaunch => {
            let unfinished = |o: &Observation| o.container.as_ref().is_some_and(|c| c.unfinished());
            let not_running: Vec<String> = obs
                .iter()
                .filter(|(_, o)| state(o) != Some(ContainerState::Running) || unfinished(o))
                .map(|(h, o)| match &o.container {
                    Some(c) if c.unfinished() => format!(
                        "{h} (container {}, but its provisioning never completed)",
                        c.status
                    ),
                    Some(c) => format!("{h} (container {}, not running)", c.status),
                    None => format!("{h} (container not running, found: '')"),
                })
                .collect();
            if not_running.is_empty() {
                plan_all(
                    hosts,
                    DecisionKind::VerifyOk,
                    format!("Container '{name}' is running on all {} hosts", obs.len()),
                    |_, _| (HostAction::Verify, "running".into()),
                )
            } else {
                plan_all(
                    hosts,
                    DecisionKind::VerifyFailed,
                    format!(
                        "Container '{name}' not running on hosts: {}",
                        list_repr(&not_running)
                    ),
                    |_, o| match o.map(|o| (state(o), unfinished(o))) {
                        Some((Some(ContainerState::Running), false)) => {
                            (HostAction::Verify, "running".into())
                        }
                        Some((_, true)) => (
                            HostAction::Refuse,
                            "unfinished: its provisioning never completed".into(),
                        ),
                        _ => (
                            HostAction::Refuse,
                            "not running (no_launch never starts it)".into(),
                        ),
                    },
                )
            }
        }
        Lifetime::PerRun => {
            if let Some(msg) = launch_skew(hosts, desired.image) {
                return plan_all(hosts, DecisionKind::RefuseImageSkew, msg, |_, _| {
                    (HostAction::Refuse, "image differs across hosts".into())
                });
            }
            plan_all(
                hosts,
                DecisionKind::Launch,
                format!(
                    "Launching per_run container '{name}' on {} hosts",
                    obs.len()
                ),
                |_, o| match o.and_then(|o| o.container.as_ref()) {
                    Some(c) if c.unfinished() => (
                        HostAction::Recreate,
                        format!(
                            "replace the existing container ({}; unfinished: its provisioning \
                             never completed)",
                            c.status
                        ),
                    ),
                    Some(c) => (
                        HostAction::Recreate,
                        format!("replace the existing container ({})", c.status),
                    ),
                    None => (HostAction::Launch, "no container yet".into()),
                },
            )
        }
        Lifetime::Persistent => plan_persistent_recorded(desired, hosts),
    }
}

/// Persistent setup with provisioning records taken into account. A container this cvs-core
/// launched whose provisioning never completed ("unfinished") holds no overlay worth keeping:
/// for the decision it counts as absent, so a set of unfinished (or missing) containers is
/// cold-started again, while a finished container next to it still makes the set partial
/// (refused: nothing is removed). An unfinished container of a run that recorded completion on
/// another host did finish: the record is written only after the setup script succeeded on
/// every host, so only its own record write was interrupted; it is attached and its record
/// restored.
fn plan_persistent_recorded(
    desired: &Desired<'_>,
    hosts: &[(String, Result<Observation, String>)],
) -> Plan {
    let finished_runs: Vec<&str> = hosts
        .iter()
        .filter_map(|(_, o)| o.as_ref().ok()?.container.as_ref())
        .filter(|c| c.provisioned_by.is_some() && !c.run_id.is_empty())
        .map(|c| c.run_id.as_str())
        .collect();
    let completed = |c: &ContainerInfo| finished_runs.contains(&c.run_id.as_str());
    let unfinished = |o: &Observation| -> Option<String> {
        let c = o.container.as_ref()?;
        (c.unfinished() && !completed(c)).then(|| {
            let run = if c.run_id.is_empty() {
                "?"
            } else {
                c.run_id.as_str()
            };
            format!(
                "unfinished container of run {run} ({}; its provisioning never completed)",
                c.status
            )
        })
    };
    let effective: Vec<(String, Result<Observation, String>)> = hosts
        .iter()
        .map(|(h, o)| {
            let o = o.clone().map(|mut o| {
                if unfinished(&o).is_some() {
                    o.container = None;
                }
                o
            });
            (h.clone(), o)
        })
        .collect();
    let obs: Vec<(&str, &Observation)> = effective
        .iter()
        .filter_map(|(h, o)| o.as_ref().ok().map(|o| (h.as_str(), o)))
        .collect();
    let mut plan = plan_persistent(desired, &effective, &obs);
    let mut replaced = Vec::new();
    for (hp, (_, o)) in plan.hosts.iter_mut().zip(hosts) {
        let Ok(o) = o else { continue };
        if let Some(what) = unfinished(o) {
            match hp.action {
                HostAction::Launch => {
                    hp.action = HostAction::Recreate;
                    hp.reason = format!("{what}: replaced");
                    replaced.push(hp.host.clone());
                }
                HostAction::Refuse => hp.reason = format!("{what}; nothing is removed"),
                _ => {}
            }
        } else if let Some(c) = o.container.as_ref()
            && c.unfinished()
            && matches!(hp.action, HostAction::Attach | HostAction::Start)
        {
            hp.restore_record = true;
            hp.reason = format!(
                "{}; provisioned by run {} (completed on every host; its record is restored)",
                hp.reason, c.run_id
            );
        }
    }
    if !replaced.is_empty() {
        plan.message = format!(
            "{} (replacing unfinished containers on {}: their provisioning never completed)",
            plan.message,
            list_repr(&replaced)
        );
    }
    plan
}

fn plan_persistent(
    desired: &Desired<'_>,
    hosts: &[(String, Result<Observation, String>)],
    obs: &[(&str, &Observation)],
) -> Plan {
    let name = desired.name;
    // The shared decision table covers running/absent/skew/unreadable; a stopped container is
    // present (its overlay must not be replaced), so it counts as running here and is started.
    let running: Vec<(String, ProbeState)> = obs
        .iter()
        .map(|(h, o)| {
            (
                (*h).to_owned(),
                ProbeState {
                    running: o.container.is_some(),
                    exit_code: 0,
                    name: if o.container.is_some() {
                        name.to_owned()
                    } else {
                        String::new()
                    },
                },
            )
        })
        .collect();
    let images: Vec<(String, ImageState)> = obs
        .iter()
        .map(|(h, o)| {
            (
                (*h).to_owned(),
                ImageState {
                    container_sha: o
                        .container
                        .as_ref()
                        .map(|c| c.image_id.clone())
                        .unwrap_or_default(),
                    image_sha: o.local_image.clone(),
                },
            )
        })
        .collect();
    let decision = decide_setup(&SetupInput {
        lifetime: Lifetime::Persistent,
        running: &running,
        image_status: Some(&images),
        hosts: None,
        container_name: name,
        image: desired.image,
    });
    let decision = match decision {
        Ok(d) => d,
        Err(e) => {
            return plan_all(
                hosts,
                DecisionKind::RefuseProbeFailed,
                e.to_string(),
                |_, _| (HostAction::Refuse, "no decision".into()),
            );
        }
    };
    match decision.kind {
        DecisionKind::Launch => {
            if let Some(msg) = launch_skew(hosts, desired.image) {
                return plan_all(hosts, DecisionKind::RefuseImageSkew, msg, |_, _| {
                    (HostAction::Refuse, "image differs across hosts".into())
                });
            }
            plan_all(hosts, DecisionKind::Launch, decision.message, |_, _| {
                (
                    HostAction::Launch,
                    "cold start: not present on any host".into(),
                )
            })
        }
        DecisionKind::Attach => {
            let drifted: Vec<(&str, &str)> = obs
                .iter()
                .filter_map(|(h, o)| {
                    let c = o.container.as_ref()?;
                    (!c.config_hash.is_empty() && c.config_hash != desired.config_hash)
                        .then_some((*h, c.config_hash.as_str()))
                })
                .collect();
            if !drifted.is_empty() && !desired.recreate_on_drift {
                let names: Vec<&str> = drifted.iter().map(|(h, _)| *h).collect();
                return plan_all(
                    hosts,
                    DecisionKind::RefuseDrift,
                    format!(
                        "Persistent container '{name}' on {} was created from a different \
                         configuration (image, run arguments, setup_script or sshd port changed). \
                         Refusing to attach to a drifted environment; rerun with recreate to \
                         replace it (its overlay is lost) or restore the configuration.",
                        list_repr(&names)
                    ),
                    |h, _| match drifted.iter().find(|(d, _)| *d == h) {
                        Some((_, got)) => (
                            HostAction::Refuse,
                            format!(
                                "config hash {got} differs from the configuration's {}",
                                desired.config_hash
                            ),
                        ),
                        None => (HostAction::Refuse, "matches; another host drifted".into()),
                    },
                );
            }
            let mut plan = plan_all(hosts, DecisionKind::Attach, decision.message, |h, o| {
                let c = o.and_then(|o| o.container.as_ref());
                if drifted.iter().any(|(d, _)| *d == h) {
                    return (
                        HostAction::Recreate,
                        "configuration drifted; recreate requested".into(),
                    );
                }
                match c.map(|c| c.state()) {
                    Some(ContainerState::Stopped) => {
                        (HostAction::Start, "stopped: start it (overlay kept)".into())
                    }
                    _ => (HostAction::Attach, "running".into()),
                }
            });
            let started: Vec<&str> = plan
                .hosts
                .iter()
                .filter(|p| p.action == HostAction::Start)
                .map(|p| p.host.as_str())
                .collect();
            if !started.is_empty() {
                // Not "running on all": some were stopped and are started (overlay kept).
                plan.message = format!(
                    "Attaching to persistent container '{name}' present on all {} hosts; \
                     starting it on {} (stopped; overlay kept)",
                    plan.hosts.len(),
                    list_repr(&started)
                );
            }
            plan.warnings = decision.warnings;
            for (h, o) in obs {
                if o.container
                    .as_ref()
                    .is_some_and(|c| c.config_hash.is_empty())
                {
                    plan.warnings.push(format!(
                        "Persistent container '{name}' on {h} has no cvs.config-hash label (not \
                         created by cvs-core); drift cannot be checked there"
                    ));
                }
            }
            plan
        }
        kind => {
            let message = decision
                .message
                .replace("is running on", "exists on")
                .replace("but missing on", "but is missing on");
            plan_all(hosts, kind, message, |_, o| {
                let reason = match o.and_then(|o| o.container.as_ref()) {
                    Some(c) => format!("present ({}); nothing is removed", c.status),
                    None => "absent".into(),
                };
                (HostAction::Refuse, reason)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::observe::{ContainerInfo, Privilege};
    use super::*;

    fn host(container: Option<(&str, &str, &str)>, local: &str) -> Result<Observation, String> {
        Ok(Observation {
            privilege: Privilege::Root,
            home: "/root".into(),
            devices: vec![],
            container: container.map(|(status, image, hash)| ContainerInfo {
                running: status == "running",
                status: status.into(),
                id: "id".into(),
                image_id: image.into(),
                config_hash: hash.into(),
                ..ContainerInfo::default()
            }),
            local_image: local.into(),
            sshd: Default::default(),
        })
    }

    /// A container launched by a recording cvs-core: `record` is the run ID in its
    /// provisioning record (`None`: no record).
    fn recorded(status: &str, run: &str, record: Option<&str>) -> Result<Observation, String> {
        let mut o = host(Some((status, "A", "H")), "A")?;
        if let Some(c) = o.container.as_mut() {
            c.state_file = "/var/lib/cvs-core/state".into();
            c.run_id = run.into();
            c.provisioned_by = record.map(str::to_owned);
        }
        Ok(o)
    }

    fn desired(lifetime: Lifetime) -> Desired<'static> {
        Desired {
            lifetime,
            name: "c1",
            image: "img:1",
            config_hash: "H",
            recreate_on_drift: false,
        }
    }

    fn hosts(obs: Vec<Result<Observation, String>>) -> Vec<(String, Result<Observation, String>)> {
        obs.into_iter()
            .enumerate()
            .map(|(i, o)| (format!("h{}", i + 1), o))
            .collect()
    }

    fn actions(p: &Plan) -> Vec<HostAction> {
        p.hosts.iter().map(|h| h.action).collect()
    }

    const RUN_A: Option<(&str, &str, &str)> = Some(("running", "A", "H"));

    #[test]
    fn persistent_table() {
        use DecisionKind as K;
        use HostAction as A;
        type Case = (Vec<Result<Observation, String>>, K, Vec<A>);
        let cases: Vec<Case> = vec![
            (
                vec![host(RUN_A, "A"), host(RUN_A, "A")],
                K::Attach,
                vec![A::Attach, A::Attach],
            ),
            (
                vec![host(None, "A"), host(None, "")],
                K::Launch,
                vec![A::Launch, A::Launch],
            ),
            (
                vec![host(RUN_A, "A"), host(Some(("exited", "A", "H")), "A")],
                K::Attach,
                vec![A::Attach, A::Start],
            ),
            (
                vec![host(RUN_A, "A"), host(None, "A")],
                K::RefusePartial,
                vec![A::Refuse, A::Refuse],
            ),
            (
                vec![host(Some(("exited", "A", "H")), "A"), host(None, "A")],
                K::RefusePartial,
                vec![A::Refuse, A::Refuse],
            ),
            (
                vec![host(RUN_A, "A"), Err("ssh: timeout".into())],
                K::RefuseProbeFailed,
                vec![A::Refuse, A::Refuse],
            ),
            (
                vec![host(RUN_A, "A"), host(Some(("running", "B", "H")), "B")],
                K::RefuseImageSkew,
                vec![A::Refuse, A::Refuse],
            ),
            (
                vec![host(RUN_A, "A"), host(Some(("running", "", "H")), "A")],
                K::RefuseUnreadableSha,
                vec![A::Refuse, A::Refuse],
            ),
            (
                vec![host(RUN_A, "A"), host(Some(("running", "A", "OLD")), "A")],
                K::RefuseDrift,
                vec![A::Refuse, A::Refuse],
            ),
            (
                vec![host(None, "A"), host(None, "B")],
                K::RefuseImageSkew,
                vec![A::Refuse, A::Refuse],
            ),
        ];
        for (i, (obs, kind, want)) in cases.into_iter().enumerate() {
            let p = plan_setup(&desired(Lifetime::Persistent), &hosts(obs));
            assert_eq!(p.kind, kind, "case {i}: {}", p.message);
            assert_eq!(actions(&p), want, "case {i}");
        }
    }

    #[test]
    fn unfinished_containers_are_replaced_never_attached() {
        use DecisionKind as K;
        use HostAction as A;
        let d = desired(Lifetime::Persistent);
        // Killed after launch / during provisioning: no host has a record -> cold start again.
        let p = plan_setup(
            &d,
            &hosts(vec![
                recorded("running", "r1", None),
                recorded("exited", "r1", None),
                host(None, "A"),
            ]),
        );
        assert_eq!(p.kind, K::Launch, "{}", p.message);
        assert_eq!(actions(&p), [A::Recreate, A::Recreate, A::Launch]);
        assert!(
            p.hosts[0].reason.contains("never completed"),
            "{}",
            p.hosts[0].reason
        );
        assert!(p.message.contains("['h1', 'h2']"), "{}", p.message);
        // A finished container next to an unfinished one of another run: partial, nothing
        // is removed.
        let p = plan_setup(
            &d,
            &hosts(vec![
                recorded("running", "r1", Some("r1")),
                recorded("running", "r2", None),
            ]),
        );
        assert_eq!(p.kind, K::RefusePartial, "{}", p.message);
        assert_eq!(actions(&p), [A::Refuse, A::Refuse]);
        assert!(p.hosts[1].reason.contains("unfinished container of run r2"));
        // Killed during the record round: the run completed everywhere, attach and restore.
        let p = plan_setup(
            &d,
            &hosts(vec![
                recorded("running", "r1", Some("r1")),
                recorded("running", "r1", None),
            ]),
        );
        assert_eq!(p.kind, K::Attach, "{}", p.message);
        assert_eq!(actions(&p), [A::Attach, A::Attach]);
        assert!(!p.hosts[0].restore_record && p.hosts[1].restore_record);
        // Finished everywhere: attach, nothing to restore.
        let p = plan_setup(
            &d,
            &hosts(vec![
                recorded("running", "r1", Some("r1")),
                recorded("running", "r1", Some("r1")),
            ]),
        );
        assert_eq!(actions(&p), [A::Attach, A::Attach]);
        assert!(p.hosts.iter().all(|h| !h.restore_record));
        // no_launch never verifies an unfinished container; per_run says why it is replaced.
        let p = plan_setup(
            &desired(Lifetime::NoLaunch),
            &hosts(vec![recorded("running", "r1", None)]),
        );
        assert_eq!(p.kind, K::VerifyFailed);
        assert!(
            p.message.contains("provisioning never completed"),
            "{}",
            p.message
        );
        let p = plan_setup(
            &desired(Lifetime::PerRun),
            &hosts(vec![recorded("running", "r1", None)]),
        );
        assert_eq!(actions(&p), [A::Recreate]);
        assert!(p.hosts[0].reason.contains("unfinished"));
    }

    #[test]
    fn restarting_stopped_containers_is_not_called_running() {
        let p = plan_setup(
            &desired(Lifetime::Persistent),
            &hosts(vec![
                host(Some(("exited", "A", "H")), "A"),
                host(Some(("exited", "A", "H")), "A"),
            ]),
        );
        assert_eq!(p.kind, DecisionKind::Attach);
        assert!(!p.message.contains("running on all"), "{}", p.message);
        assert!(
            p.message.contains("starting it on ['h1', 'h2']"),
            "{}",
            p.message
        );
    }

    #[test]
    fn drift_with_opt_in_recreates_only_drifted_hosts() {
        let mut d = desired(Lifetime::Persistent);
        d.recreate_on_drift = true;
        let p = plan_setup(
            &d,
            &hosts(vec![
                host(RUN_A, "A"),
                host(Some(("running", "A", "OLD")), "A"),
            ]),
        );
        assert_eq!(p.kind, DecisionKind::Attach);
        assert_eq!(actions(&p), [HostAction::Attach, HostAction::Recreate]);
        assert!(HostAction::Recreate.creates() && !HostAction::Start.creates());
    }

    #[test]
    fn drift_message_names_hosts_and_hashes() {
        let p = plan_setup(
            &desired(Lifetime::Persistent),
            &hosts(vec![
                host(RUN_A, "A"),
                host(Some(("running", "A", "OLD")), "A"),
            ]),
        );
        assert!(p.message.contains("['h2']"), "{}", p.message);
        assert_eq!(
            p.hosts[1].reason,
            "config hash OLD differs from the configuration's H"
        );
        assert!(!p.proceeds());
    }

    #[test]
    fn unlabelled_containers_attach_with_a_warning() {
        let p = plan_setup(
            &desired(Lifetime::Persistent),
            &hosts(vec![host(Some(("running", "A", "")), "A")]),
        );
        assert_eq!(p.kind, DecisionKind::Attach);
        assert!(p.warnings[0].contains("no cvs.config-hash label"));
    }

    #[test]
    fn stale_local_tag_warns_on_attach() {
        let p = plan_setup(
            &desired(Lifetime::Persistent),
            &hosts(vec![host(RUN_A, "B")]),
        );
        assert_eq!(p.kind, DecisionKind::Attach);
        assert!(
            p.warnings[0].contains("overlay may be stale"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn per_run_replaces_and_checks_local_images() {
        let p = plan_setup(
            &desired(Lifetime::PerRun),
            &hosts(vec![host(Some(("exited", "A", "H")), "A"), host(None, "")]),
        );
        assert_eq!(p.kind, DecisionKind::Launch);
        assert_eq!(actions(&p), [HostAction::Recreate, HostAction::Launch]);
        let p = plan_setup(
            &desired(Lifetime::PerRun),
            &hosts(vec![host(None, "A"), host(None, "B")]),
        );
        assert_eq!(p.kind, DecisionKind::RefuseImageSkew);
        assert!(p.message.contains("'h1': 'A', 'h2': 'B'"), "{}", p.message);
    }

    #[test]
    fn no_launch_only_verifies() {
        let p = plan_setup(
            &desired(Lifetime::NoLaunch),
            &hosts(vec![host(RUN_A, "A"), host(RUN_A, "A")]),
        );
        assert_eq!(
            (p.kind, actions(&p)),
            (DecisionKind::VerifyOk, vec![HostAction::Verify; 2])
        );
        let p = plan_setup(
            &desired(Lifetime::NoLaunch),
            &hosts(vec![host(RUN_A, "A"), host(None, "A")]),
        );
        assert_eq!(p.kind, DecisionKind::VerifyFailed);
        assert!(
            p.message.contains("h2 (container not running"),
            "{}",
            p.message
        );
        let p = plan_setup(
            &desired(Lifetime::NoLaunch),
            &hosts(vec![host(RUN_A, "A"), Err("no route".into())]),
        );
        assert_eq!(p.kind, DecisionKind::VerifyFailed);
        assert_eq!(p.hosts[1].reason, "probe failed: no route");
    }
}

/// Devices the user listed beyond CVS's defaults: they must exist on every host.
pub fn user_devices(spec: &crate::config::ContainerSpec) -> Vec<String> {
    let defaults: &[&str] = if spec.use_defaults {
        &crate::config::DEFAULT_DEVICES
    } else {
        &[]
    };
    spec.run_args
        .devices
        .iter()
        .filter(|d| !defaults.contains(&d.as_str()))
        .cloned()
        .collect()
}

/// The spec as launched on one host: CVS's default devices only where the host has them
/// (GPU-less nodes work), user-listed devices required (else why), and CVS's default
/// `/home/<control user>` volumes pointed at the SSH user's real home on that host (CVS's
/// guess is wrong for root and for homes elsewhere).
pub fn host_spec(
    spec: &crate::config::ContainerSpec,
    obs: &Observation,
) -> Result<crate::config::ContainerSpec, String> {
    let mut spec = spec.clone();
    if let Some(missing) = user_devices(&spec)
        .iter()
        .find(|d| !obs.devices.contains(d))
    {
        return Err(format!(
            "device {missing} is listed in container.runtime.args.devices but does not exist on \
             this host"
        ));
    }
    if spec.use_defaults {
        spec.run_args.devices.retain(|d| {
            !crate::config::DEFAULT_DEVICES.contains(&d.as_str()) || obs.devices.contains(d)
        });
        let home = obs.home.trim_end_matches('/');
        // The merged spec starts with CVS's two default volumes, built from the control user.
        if !home.is_empty() && spec.run_args.volumes.len() >= 2 {
            let v = &mut spec.run_args.volumes;
            if v[0].ends_with(":/workspace") && v[1].ends_with("/.ssh:/host_ssh") {
                v[0] = format!("{home}:/workspace");
                v[1] = format!("{home}/.ssh:/host_ssh");
            }
        }
    }
    Ok(spec)
}

/// `cvs.config-hash`: what makes a persistent container "the one this configuration wants":
/// the image, the merged run arguments, the setup script's content and the sshd port. Stable
/// across cvs-core versions (SHA-256 over canonical JSON), shortened for labels and logs.
pub fn config_hash(
    spec: &crate::config::ContainerSpec,
    setup_script: &[u8],
    sshd_port: u16,
) -> String {
    use sha2::{Digest, Sha256};
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let canonical = serde_json::json!({
        "image": spec.image,
        "run_args": spec.run_args,
        "setup_script_sha256": hex(&Sha256::digest(setup_script)),
        "sshd_port": sshd_port,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    hex(&digest)[..16].to_owned()
}

#[cfg(test)]
mod hash_tests {
    use super::super::observe::{Observation, Privilege};
    use super::{config_hash, host_spec};
    use crate::config::{ContainerSpec, Lifetime, RunArgs};

    fn spec(image: &str) -> ContainerSpec {
        ContainerSpec {
            lifetime: Lifetime::Persistent,
            image: Some(image.into()),
            name: Some("c".into()),
            setup_script: "/s.sh".into(),
            image_tar: None,
            runtime: "docker".into(),
            use_defaults: false,
            run_args: RunArgs {
                volumes: vec![],
                devices: vec![],
                capabilities: vec![],
                security_opts: vec![],
                groups: vec![],
                ulimits: vec![],
                environment: vec![],
                network: Some("host".into()),
                ipc: None,
                privileged: false,
            },
        }
    }

    fn obs(home: &str, devices: &[&str]) -> Observation {
        Observation {
            privilege: Privilege::Root,
            home: home.into(),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            container: None,
            local_image: String::new(),
            sshd: Default::default(),
        }
    }

    #[test]
    fn host_spec_keeps_default_devices_present_and_real_home() {
        let mut s = spec("a");
        s.use_defaults = true;
        s.run_args.volumes = vec![
            "/home/alice:/workspace".into(),
            "/home/alice/.ssh:/host_ssh".into(),
            "/data:/data".into(),
        ];
        s.run_args.devices = vec![
            "/dev/kfd".into(),
            "/dev/dri".into(),
            "/dev/infiniband".into(),
        ];
        let h = host_spec(&s, &obs("/root", &["/dev/kfd"])).unwrap();
        assert_eq!(h.run_args.devices, ["/dev/kfd"]);
        assert_eq!(
            h.run_args.volumes,
            ["/root:/workspace", "/root/.ssh:/host_ssh", "/data:/data"]
        );
        let none = host_spec(&s, &obs("", &[])).unwrap();
        assert!(none.run_args.devices.is_empty());
        assert_eq!(none.run_args.volumes[0], "/home/alice:/workspace");
    }

    #[test]
    fn host_spec_requires_user_devices() {
        let mut s = spec("a");
        s.run_args.devices = vec!["/dev/nvme0".into()];
        let err = host_spec(&s, &obs("/root", &[])).unwrap_err();
        assert!(err.contains("/dev/nvme0"), "{err}");
        let ok = host_spec(&s, &obs("/root", &["/dev/nvme0"])).unwrap();
        assert_eq!(ok.run_args.devices, ["/dev/nvme0"]);
        // Without CVS's defaults nothing is rewritten.
        s.run_args.volumes = vec!["/home/x:/workspace".into(), "/home/x/.ssh:/host_ssh".into()];
        let same = host_spec(&s, &obs("/root", &["/dev/nvme0"])).unwrap();
        assert_eq!(same.run_args.volumes[0], "/home/x:/workspace");
    }

    #[test]
    fn hash_changes_with_each_input_and_only_then() {
        let base = config_hash(&spec("a"), b"script", 2224);
        assert_eq!(base.len(), 16);
        assert_eq!(base, config_hash(&spec("a"), b"script", 2224));
        assert_ne!(base, config_hash(&spec("b"), b"script", 2224));
        assert_ne!(base, config_hash(&spec("a"), b"script2", 2224));
        assert_ne!(base, config_hash(&spec("a"), b"script", 2225));
        let mut s = spec("a");
        s.run_args.ulimits.push("nofile=1024".into());
        assert_ne!(base, config_hash(&s, b"script", 2224));
        // The lifetime and the setup_script path are not part of the environment.
        let mut s = spec("a");
        s.setup_script = "/other/path.sh".into();
        assert_eq!(base, config_hash(&s, b"script", 2224));
    }
}
