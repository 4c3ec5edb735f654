//! The native container driver: runs the pure plan (`lifecycle::plan`) over the fan-out engine.
//! One probe round trip per host, a per-host lock for the whole setup, launch with labels and
//! per-host devices, provisioning over stdin recorded inside the container, idempotent sshd
//! proven to be the container's own and answering an SSH banner.
//!
//! Every step takes a [`Ctx`]: a cancellation (Ctrl-C, SIGTERM, an awaiting task dropped)
//! stops the remote work of the step on every host (in-container processes included), then
//! setup removes exactly what its own run created (by the `cvs.run-id` label, never another
//! container), checks each removal and reports what it did and did not do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::cluster::{EventSink, HoldFailure, Phase, emit};
use super::job::{Input, JobSpec};
use super::result::{HostResult, Status};
use crate::config::pyrepr::list_repr;
use crate::config::{ContainerSpec, DEFAULT_DEVICES, Lifetime};
use crate::lifecycle::observe::{ContainerInfo, Observation, Privilege, Sshd, parse_probe};
use crate::lifecycle::plan::{Desired, HostAction, Plan, config_hash, host_spec, plan_setup};
use crate::render::lifecycle as rl;
use crate::render::{self, RunOptions};
use crate::transport::{AnyHolder as Holder, AnyTransport};

#[derive(Debug, Clone)]
pub struct LifecycleOptions {
    /// `--pull` policy for `docker run`; `None` keeps docker's default (pull when missing).
    pub pull: Option<String>,
    /// Bound on `docker run` (a cold pull of a multi-GB image must fit; CVS's 900 s).
    pub start_timeout: Duration,
    pub probe_timeout: Duration,
    pub provision_timeout: Duration,
    pub sshd_port: u16,
    /// Explicit opt-in to recreate persistent containers whose configuration drifted.
    pub recreate: bool,
    /// Names this run on the containers it creates (`cvs.run-id`): cleanup removes only those.
    pub run_id: String,
    pub owner: String,
    /// Deliver the setup script base64-inline like CVS (16 KiB cap) instead of over stdin.
    pub inline_provision: bool,
    /// Hold a per-host lock on the container name for the whole setup.
    pub lock: bool,
    pub lock_wait: Duration,
}

impl Default for LifecycleOptions {
    fn default() -> Self {
        LifecycleOptions {
            pull: None,
            start_timeout: Duration::from_secs(900),
            probe_timeout: Duration::from_secs(60),
            provision_timeout: Duration::from_secs(1800),
            sshd_port: 2224,
            recreate: false,
            run_id: String::new(),
            owner: String::new(),
            inline_provision: false,
            lock: true,
            lock_wait: Duration::from_secs(600),
        }
    }
}

/// What one call runs with: where progress goes, and the signal that cancels it.
pub struct Ctx {
    pub events: Option<EventSink>,
    pub cancel: watch::Receiver<bool>,
}

impl Ctx {
    /// A context nobody can cancel (tests, internal use).
    pub fn detached(events: Option<EventSink>) -> Ctx {
        let (tx, cancel) = watch::channel(false);
        // The receiver alone keeps the channel readable; a dropped sender never cancels.
        drop(tx);
        Ctx { events, cancel }
    }

    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}

/// Locks held on every host, and what the probe that ran under them saw.
struct Locked {
    _holders: Vec<Holder>,
    observed: Vec<(String, Result<Observation, String>)>,
}

/// Why setup could not take its locks and probe under them.
enum LockFailure {
    /// These hosts could not be connected to.
    Connect(Vec<HostResult>),
    /// One host's lock command failed at `stage` (0: waiting for the lock, 1: the probe).
    Hold(HoldFailure),
    Internal(String),
}

/// One host's part of an operation.
#[derive(Debug, Clone, Default)]
pub struct HostReport {
    pub host: String,
    pub action: String,
    pub ok: bool,
    /// Why (plan), or what went wrong.
    pub detail: String,
    pub container_id: String,
    pub started_at: String,
    pub container_image: String,
    pub local_image: String,
    pub config_hash: String,
    pub running: bool,
    pub sshd_up: bool,
    /// Launched by cvs-core, but its provisioning never completed (the next setup replaces it).
    pub unfinished: bool,
    /// Who holds the sshd port when it is not this container's sshd (empty otherwise).
    pub sshd_holder: String,
    /// Output of the step that failed (or of provisioning).
    pub output: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub op: &'static str,
    pub kind: String,
    pub ok: bool,
    /// One human line.
    pub message: String,
    pub hosts: Vec<HostReport>,
    pub warnings: Vec<String>,
    pub elapsed: Duration,
}

/// The driver's operations, so one entry point can run any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Plan,
    Setup,
    SetupSshd,
    Teardown { orphans: bool },
    Status,
}

/// What a checked removal found on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Removal {
    Removed,
    /// Nothing to remove (for a run-scoped removal: no container of this run).
    Absent,
    /// The name belongs to a container this run did not create (its run ID): left alone.
    Kept(String),
    Failed(String),
}

impl Removal {
    fn from_result(r: &HostResult) -> Removal {
        let out = String::from_utf8_lossy(&r.stdout);
        let last = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        match last {
            "removed" if r.status == Status::Ok => Removal::Removed,
            "absent" if r.status == Status::Ok => Removal::Absent,
            _ if r.status == Status::Ok && last.starts_with("kept:") => {
                Removal::Kept(last[5..].to_owned())
            }
            _ if last.starts_with("failed:") => Removal::Failed(last[7..].trim().to_owned()),
            _ => Removal::Failed(failure(r, "remove")),
        }
    }
}

pub struct Driver {
    cluster: Arc<AnyTransport>,
    spec: ContainerSpec,
    name: String,
    image: String,
    script: Vec<u8>,
    hash: String,
    opts: LifecycleOptions,
    privileges: Mutex<HashMap<String, Privilege>>,
    /// What the last successful setup left on each host, so a `setup_sshd` right after it needs
    /// no second probe round trip.
    after_setup: Mutex<Option<(Instant, Observed)>>,
}

type Observed = Vec<(String, Result<Observation, String>)>;

/// How long the state left by `setup` stands in for a probe (sshd setup follows at once).
const SETUP_STATE_TTL: Duration = Duration::from_secs(15);

/// Bound on each cleanup removal after a failure or a cancellation.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);

fn output_of(r: &HostResult) -> String {
    let mut s = String::from_utf8_lossy(&r.stdout).trim_end().to_owned();
    let err = String::from_utf8_lossy(&r.stderr);
    if !err.trim().is_empty() {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(err.trim_end());
    }
    if s.is_empty()
        && let Some(e) = &r.error
    {
        s = e.clone();
    }
    s
}

fn failure(r: &HostResult, what: &str) -> String {
    match r.status {
        Status::ExitNonzero => format!("{what} failed (exit code {})", r.exit_code),
        s => format!(
            "{what} failed ({}): {}",
            s.as_str(),
            r.error.clone().unwrap_or_default()
        ),
    }
}

/// A run ID or owner ends up in labels, label filters and records: keep it to characters that
/// need no quoting anywhere and cannot be mistaken for separators.
fn check_token(what: &str, v: &str) -> crate::error::Result<()> {
    if v.is_empty()
        || v.len() > 128
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Err(crate::error::Error::InvalidArgument(format!(
            "{what} {v:?} must be 1-128 characters of [A-Za-z0-9._@-]"
        )));
    }
    Ok(())
}

impl Driver {
    pub fn new(
        cluster: Arc<AnyTransport>,
        spec: ContainerSpec,
        script: Vec<u8>,
        mut opts: LifecycleOptions,
    ) -> crate::error::Result<Self> {
        let name = spec.name.clone().ok_or_else(|| {
            crate::error::Error::InvalidArgument("the container spec has no name".into())
        })?;
        let image = spec.image.clone().ok_or_else(|| {
            crate::error::Error::InvalidArgument("the container spec has no image".into())
        })?;
        if opts.run_id.is_empty() {
            opts.run_id = format!("run-{}", super::job::new_token());
        }
        check_token("run_id", &opts.run_id)?;
        if !opts.owner.is_empty() {
            check_token("owner", &opts.owner)?;
        }
        // Found before any host is touched, not after containers were launched everywhere.
        if opts.inline_provision {
            render::provision_command(
                &script,
                &format!("container.setup_script '{}'", spec.setup_script),
            )?;
        }
        let hash = config_hash(&spec, &script, opts.sshd_port);
        Ok(Driver {
            cluster,
            spec,
            name,
            image,
            script,
            hash,
            opts,
            privileges: Mutex::new(HashMap::new()),
            after_setup: Mutex::new(None),
        })
    }

    pub fn config_hash(&self) -> &str {
        &self.hash
    }

    pub fn run_id(&self) -> &str {
        &self.opts.run_id
    }

    pub fn cluster(&self) -> &Arc<AnyTransport> {
        &self.cluster
    }

    fn step(&self, cx: &Ctx, host: &str, step: &'static str) {
        emit(
            &cx.events,
            host,
            Phase::Step(step),
            None,
            Duration::ZERO,
            String::new(),
        );
    }

    fn prefix(&self, host: &str) -> &'static str {
        self.privileges
            .lock()
            .ok()
            .and_then(|p| p.get(host).copied())
            .unwrap_or(Privilege::Sudo)
            .prefix()
    }

    /// Devices the probe checks beyond CVS's defaults: the user's own (which must exist).
    fn user_devices(&self) -> Vec<String> {
        crate::lifecycle::plan::user_devices(&self.spec)
    }

    async fn run(&self, jobs: Vec<(String, JobSpec)>, cx: &Ctx) -> Vec<HostResult> {
        self.cluster.run_many(jobs, None, cx.cancel.clone()).await
    }

    /// Cleanup after a failure or a cancellation must run even though the call was cancelled.
    async fn run_to_end(&self, jobs: Vec<(String, JobSpec)>) -> Vec<HostResult> {
        let cx = Ctx::detached(None);
        self.run(jobs, &cx).await
    }

    /// A job for a rendered command. Values were validated when the driver was built, so a
    /// rendering error here is a bug; it still must not vanish: the host then runs a command
    /// that prints the error and fails, and the per-host report carries the text.
    fn job(cmd: crate::error::Result<String>, timeout: Duration) -> JobSpec {
        let mut j = cmd
            .and_then(|c| JobSpec::new(c, Input::None))
            .unwrap_or_else(|e| {
                let shown = render::quote(&e.to_string()).unwrap_or_default();
                JobSpec::new(format!("echo {shown} >&2; exit 2"), Input::None)
                    .unwrap_or_else(|_| JobSpec::new("exit 2", Input::None).expect("literal"))
            });
        j.timeout = Some(timeout);
        j
    }

    /// A job whose processes run in the container as root: abandoning it kills them with the
    /// host's privilege prefix (they carry the job marker, see `rl::job_exec_command`).
    fn container_job(
        &self,
        host: &str,
        cmd: crate::error::Result<String>,
        timeout: Duration,
    ) -> JobSpec {
        let mut j = Self::job(cmd, timeout);
        j.kill_prefix = self.prefix(host).to_owned();
        j
    }

    fn probe_script(&self) -> crate::error::Result<String> {
        let mut check: Vec<String> = DEFAULT_DEVICES.iter().map(|d| (*d).to_owned()).collect();
        check.extend(self.user_devices());
        rl::probe_script(&self.name, &self.image, self.opts.sshd_port, &check)
    }

    fn remember_privileges(&self, observed: &[(String, Result<Observation, String>)]) {
        if let Ok(mut p) = self.privileges.lock() {
            for (h, o) in observed {
                if let Ok(o) = o {
                    p.insert(h.clone(), o.privilege);
                }
            }
        }
    }

    /// One probe round trip per host.
    pub async fn probe(
        &self,
        hosts: &[String],
        cx: &Ctx,
    ) -> Vec<(String, Result<Observation, String>)> {
        let script = match self.probe_script() {
            Ok(s) => s,
            Err(e) => {
                return hosts
                    .iter()
                    .map(|h| (h.clone(), Err(e.to_string())))
                    .collect();
            }
        };
        for h in hosts {
            self.step(cx, h, "probe");
        }
        let jobs = hosts
            .iter()
            .map(|h| {
                (
                    h.clone(),
                    Self::job(Ok(script.clone()), self.opts.probe_timeout),
                )
            })
            .collect();
        let results = self.run(jobs, cx).await;
        let observed: Vec<(String, Result<Observation, String>)> = results
            .into_iter()
            .map(|r| {
                let obs = if r.status == Status::Ok {
                    parse_probe(&String::from_utf8_lossy(&r.stdout))
                } else {
                    Err(format!(
                        "{}: {}",
                        r.status.as_str(),
                        r.error.clone().unwrap_or_else(|| output_of(&r))
                    ))
                };
                (r.host, obs)
            })
            .collect();
        self.remember_privileges(&observed);
        observed
    }

    fn desired(&self) -> Desired<'_> {
        Desired {
            lifetime: self.spec.lifetime,
            name: &self.name,
            image: &self.image,
            config_hash: &self.hash,
            recreate_on_drift: self.opts.recreate,
        }
    }

    fn report_from(
        &self,
        op: &'static str,
        plan: &Plan,
        observed: &[(String, Result<Observation, String>)],
        started: Instant,
    ) -> Report {
        let hosts = plan
            .hosts
            .iter()
            .zip(observed)
            .map(|(hp, (_, o))| {
                let mut r = HostReport {
                    host: hp.host.clone(),
                    action: hp.action.as_str().into(),
                    ok: hp.action != HostAction::Refuse,
                    detail: hp.reason.clone(),
                    ..HostReport::default()
                };
                fill(&mut r, o.as_ref().ok());
                r
            })
            .collect();
        Report {
            op,
            kind: plan.kind.as_str().into(),
            ok: plan.proceeds(),
            message: plan.message.clone(),
            hosts,
            warnings: plan.warnings.clone(),
            elapsed: started.elapsed(),
        }
    }

    /// Run one operation.
    pub async fn run_op(&self, op: Op, cx: &Ctx) -> Report {
        match op {
            Op::Plan => self.plan(cx).await,
            Op::Setup => self.setup(cx).await,
            Op::SetupSshd => self.setup_sshd(cx).await,
            Op::Teardown { orphans } => self.teardown(orphans, cx).await,
            Op::Status => self.status(cx).await,
        }
    }

    /// What `setup` would do on each host and why. Changes nothing.
    pub async fn plan(&self, cx: &Ctx) -> Report {
        let started = Instant::now();
        let hosts = self.cluster.hosts().to_vec();
        let observed = self.probe(&hosts, cx).await;
        let plan = plan_setup(&self.desired(), &observed);
        self.report_from("plan", &plan, &observed, started)
    }

    /// Per-host state: running, IDs, start time, images, config hash, provisioning, sshd.
    pub async fn status(&self, cx: &Ctx) -> Report {
        let started = Instant::now();
        let hosts = self.cluster.hosts().to_vec();
        let observed = self.probe(&hosts, cx).await;
        let mut ok = true;
        let reports: Vec<HostReport> = observed
            .iter()
            .map(|(h, o)| {
                let mut r = HostReport {
                    host: h.clone(),
                    action: "status".into(),
                    ..HostReport::default()
                };
                match o {
                    Ok(o) => {
                        fill(&mut r, Some(o));
                        r.ok = r.running && !r.unfinished;
                        r.detail = match &o.container {
                            None => "absent".into(),
                            Some(c) if c.unfinished() => format!(
                                "{} (unfinished: launched by run {}, its provisioning never \
                                 completed; the next up replaces it)",
                                c.status, c.run_id
                            ),
                            Some(c) if !c.config_hash.is_empty() && c.config_hash != self.hash => {
                                format!(
                                    "{} (drifted: config hash {} != {})",
                                    c.status, c.config_hash, self.hash
                                )
                            }
                            Some(c) => c.status.clone(),
                        };
                        if let Some(holder) = o.sshd.holder() {
                            r.detail.push_str(&format!(
                                "; port {} held by {holder}",
                                self.opts.sshd_port
                            ));
                        }
                    }
                    Err(e) => r.detail = format!("probe failed: {e}"),
                }
                ok &= r.ok;
                r
            })
            .collect();
        let running = reports.iter().filter(|r| r.running).count();
        let unfinished = reports.iter().filter(|r| r.unfinished).count();
        Report {
            op: "status",
            kind: "status".into(),
            ok,
            message: format!(
                "Container '{}' running on {running}/{} hosts{}",
                self.name,
                reports.len(),
                if unfinished > 0 {
                    format!(" ({unfinished} unfinished)")
                } else {
                    String::new()
                }
            ),
            hosts: reports,
            warnings: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// Lock every host for this container name and probe it in the same round trip: the head
    /// node first, then the rest in parallel, so two concurrent setups serialize at the head
    /// instead of deadlocking across hosts. The wait for the lock and the probe have their
    /// own bounds, so a hung docker is reported as such, not as a lock that was never taken.
    async fn lock_and_probe(&self, cx: &Ctx) -> Result<Locked, LockFailure> {
        let probe = self
            .probe_script()
            .map_err(|e| LockFailure::Internal(e.to_string()))?;
        let cmd =
            rl::lock_and_probe_command(&self.name, self.opts.lock_wait.as_secs() as u32, &probe)
                .map_err(|e| LockFailure::Internal(e.to_string()))?;
        let hosts = self.cluster.hosts().to_vec();
        let stages = [
            (rl::LOCKED, self.opts.lock_wait + Duration::from_secs(5)),
            (rl::PROBE_DONE, self.opts.probe_timeout),
        ];
        let (head, rest) = hosts
            .split_first()
            .ok_or_else(|| LockFailure::Internal("no hosts".into()))?;
        // Connecting is the slow part: do it for every host at once, before the head-first
        // lock order serializes anything.
        for h in &hosts {
            self.step(cx, h, "connect");
        }
        let unreachable = self.cluster.connect(&hosts).await;
        if !unreachable.is_empty() {
            return Err(LockFailure::Connect(unreachable));
        }
        self.step(cx, head, "lock");
        let first = self
            .cluster
            .hold(head, &cmd, &stages, self.prefix(head), cx.cancel.clone())
            .await
            .map_err(LockFailure::Hold)?;
        let mut got: Vec<(usize, (Holder, String))> = vec![(0, first)];
        let mut pending = tokio::task::JoinSet::new();
        for (i, h) in rest.iter().enumerate() {
            self.step(cx, h, "lock");
            let cluster = self.cluster.clone();
            let (h, cmd, cancel) = (h.clone(), cmd.clone(), cx.cancel.clone());
            let prefix = self.prefix(&h);
            pending.spawn(async move {
                let held = cluster.hold(&h, &cmd, &stages, prefix, cancel).await;
                (i + 1, held)
            });
        }
        let mut err = None;
        while let Some(joined) = pending.join_next().await {
            match joined {
                Ok((i, Ok(held))) => got.push((i, held)),
                Ok((_, Err(f))) => err = Some(LockFailure::Hold(f)),
                Err(e) => err = Some(LockFailure::Internal(e.to_string())),
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        got.sort_by_key(|(i, _)| *i);
        let mut holders = Vec::with_capacity(got.len());
        let mut observed = Vec::with_capacity(got.len());
        for ((_, (holder, text)), h) in got.into_iter().zip(&hosts) {
            holders.push(holder);
            observed.push((h.clone(), parse_probe(&text)));
        }
        self.remember_privileges(&observed);
        Ok(Locked {
            _holders: holders,
            observed,
        })
    }

    /// The report of a setup that could not lock and probe: nothing was changed anywhere.
    fn lock_report(&self, failure: LockFailure, started: Instant) -> Report {
        let name = &self.name;
        let (kind, message, failed): (&str, String, Vec<(String, String)>) = match failure {
            LockFailure::Connect(results) => {
                let failed: Vec<(String, String)> = results
                    .iter()
                    .map(|r| {
                        (
                            r.host.clone(),
                            format!(
                                "probe failed: {}: {}",
                                r.status.as_str(),
                                r.error.clone().unwrap_or_default()
                            ),
                        )
                    })
                    .collect();
                let names: Vec<&str> = failed.iter().map(|(h, _)| h.as_str()).collect();
                (
                    "refuse_probe_failed",
                    format!(
                        "Cannot determine state of container '{name}' on {} (host unreachable). \
                         Refusing to act on an untrustworthy probe -- resolve host health and \
                         rerun. Nothing was changed.",
                        list_repr(&names)
                    ),
                    failed,
                )
            }
            LockFailure::Hold(f) => {
                let host = f.result.host.clone();
                let why = f.result.error.clone().unwrap_or_default();
                match (f.stage, f.result.status) {
                    (_, Status::Cancelled) => (
                        "cancelled",
                        format!(
                            "Setup cancelled while {} on {host}; nothing was changed.",
                            if f.stage == 0 {
                                "waiting for the lock"
                            } else {
                                "probing"
                            }
                        ),
                        vec![(host, why)],
                    ),
                    (0, Status::Timeout) => (
                        "lock_failed",
                        format!(
                            "Could not lock container '{name}' on {host} within {}s: another \
                             cvs-core run is setting it up there. Nothing was changed.",
                            self.opts.lock_wait.as_secs()
                        ),
                        vec![(host, format!("lock not taken: {why}"))],
                    ),
                    (0, _) => (
                        "lock_failed",
                        format!(
                            "Could not lock container '{name}' on {host}: {why}. Nothing was \
                             changed."
                        ),
                        vec![(host, why)],
                    ),
                    _ => (
                        "refuse_probe_failed",
                        format!(
                            "Cannot determine state of container '{name}' on {host}: the probe \
                             did not finish within {}s after the lock was taken (is dockerd \
                             hung?). Nothing was changed.",
                            self.opts.probe_timeout.as_secs()
                        ),
                        vec![(host, format!("probe failed: {why}"))],
                    ),
                }
            }
            LockFailure::Internal(why) => ("lock_failed", format!("Could not lock: {why}"), vec![]),
        };
        Report {
            op: "setup",
            kind: kind.into(),
            ok: false,
            message,
            hosts: self
                .cluster
                .hosts()
                .iter()
                .map(|h| HostReport {
                    host: h.clone(),
                    action: "refuse".into(),
                    detail: failed
                        .iter()
                        .find(|(f, _)| f == h)
                        .map(|(_, why)| why.clone())
                        .unwrap_or_else(|| "not changed: another host could not be locked".into()),
                    ..HostReport::default()
                })
                .collect(),
            warnings: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// The `docker run` for one host: per-host home in the default volumes, default devices only
    /// where they exist, cvs-core labels (the state-file label promises a provisioning record).
    fn run_command_for(&self, obs: &Observation) -> Result<String, String> {
        let spec = host_spec(&self.spec, obs)?;
        let opts = RunOptions {
            prefix: obs.privilege.prefix().into(),
            infiniband_expansion: false,
            labels: vec![
                (rl::LABEL_CONFIG_HASH.into(), self.hash.clone()),
                (
                    rl::LABEL_LIFETIME.into(),
                    self.spec.lifetime.as_str().into(),
                ),
                (rl::LABEL_RUN_ID.into(), self.opts.run_id.clone()),
                (rl::LABEL_OWNER.into(), self.opts.owner.clone()),
                (rl::LABEL_STATE_FILE.into(), rl::STATE_FILE.into()),
            ],
            pull: self.opts.pull.clone(),
        };
        render::docker_run_command(&spec, &opts).map_err(|e| e.to_string())
    }

    /// Remove the container of this name whatever its origin (a per_run leftover, a drifted
    /// container the user asked to recreate, an unfinished one), each removal checked.
    async fn remove_existing(&self, hosts: &[String], cx: &Ctx) -> Vec<(String, Removal)> {
        let jobs = hosts
            .iter()
            .map(|h| {
                self.step(cx, h, "remove");
                let cmd = rl::remove_verified_command(self.prefix(h), &self.name);
                (h.clone(), Self::job(cmd, REMOVE_TIMEOUT))
            })
            .collect();
        self.run(jobs, cx)
            .await
            .iter()
            .map(|r| (r.host.clone(), Removal::from_result(r)))
            .collect()
    }

    /// Remove what this run created on `hosts`, and only that (the `cvs.run-id` label is
    /// checked on the host), each removal checked. Runs to the end even after a cancellation.
    async fn remove_created(&self, hosts: &[String], cx: &Ctx) -> Vec<(String, Removal)> {
        let jobs = hosts
            .iter()
            .map(|h| {
                self.step(cx, h, "cleanup");
                let cmd = rl::remove_own_command(self.prefix(h), &self.name, &self.opts.run_id);
                (h.clone(), Self::job(cmd, REMOVE_TIMEOUT))
            })
            .collect();
        self.run_to_end(jobs)
            .await
            .iter()
            .map(|r| (r.host.clone(), Removal::from_result(r)))
            .collect()
    }

    /// Undo this run's creations after a failure or a cancellation; per-host details say what
    /// was removed and what could not be. Returns the summary for the report's message.
    async fn undo(&self, report: &mut Report, creating: &[String], cx: &Ctx) -> String {
        if creating.is_empty() {
            return "no container had been created".into();
        }
        let removals = self.remove_created(creating, cx).await;
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for (h, removal) in &removals {
            let Some(rep) = report.hosts.iter_mut().find(|x| &x.host == h) else {
                continue;
            };
            let note = match removal {
                Removal::Removed => {
                    removed.push(h.clone());
                    "removed the container this run created".to_owned()
                }
                Removal::Absent => "no container of this run to remove".to_owned(),
                Removal::Kept(run) => format!(
                    "the container under this name belongs to run {run}, not this one: left \
                     alone"
                ),
                Removal::Failed(why) => {
                    rep.ok = false;
                    failed.push(h.clone());
                    format!(
                        "could not remove the container this run created ({why}); it is \
                         recorded as unfinished, so the next up replaces it"
                    )
                }
            };
            rep.running = rep.running && !matches!(removal, Removal::Removed);
            if rep.detail.is_empty() {
                rep.detail = note;
            } else {
                rep.detail = format!("{}; {note}", rep.detail);
            }
        }
        let mut summary = if removed.is_empty() {
            "removed no container".to_owned()
        } else {
            format!(
                "removed the {} container(s) this run created on {}",
                removed.len(),
                list_repr(&removed)
            )
        };
        if !failed.is_empty() {
            summary.push_str(&format!(
                "; could not remove them on {} (see the hosts; the next up replaces them)",
                list_repr(&failed)
            ));
        }
        summary
    }

    /// A setup that failed after it began creating containers: undo this run's creations and
    /// say what failed and what the cleanup did.
    async fn abandon(
        &self,
        mut report: Report,
        kind: &str,
        what: String,
        creating: &[String],
        cx: &Ctx,
        started: Instant,
    ) -> Report {
        let cleanup = self.undo(&mut report, creating, cx).await;
        report.ok = false;
        report.kind = kind.into();
        report.message = format!("{what}; {cleanup}");
        report.elapsed = started.elapsed();
        report
    }

    /// The report of a setup cancelled `when`: each host says whether its remote work was
    /// stopped (from the cancelled step's results), then what this run created is removed.
    async fn stopped(
        &self,
        mut report: Report,
        when: &str,
        results: &[HostResult],
        creating: &[String],
        cx: &Ctx,
        started: Instant,
    ) -> Report {
        let mut unconfirmed = Vec::new();
        for r in results {
            if let Some(rep) = report.hosts.iter_mut().find(|x| x.host == r.host) {
                rep.ok = false;
                rep.detail = match r.status {
                    Status::Cancelled => {
                        let why = r.error.clone().unwrap_or_default();
                        if why.contains("not confirmed") {
                            unconfirmed.push(r.host.clone());
                        }
                        why
                    }
                    Status::Ok => format!("cancelled {when} (this host's step had finished)"),
                    _ => failure(r, "step"),
                };
            }
        }
        let cleanup = self.undo(&mut report, creating, cx).await;
        let stopped = if results.is_empty() {
            String::new()
        } else if unconfirmed.is_empty() {
            "remote work stopped on every host; ".into()
        } else {
            format!(
                "stopping the remote work was not confirmed on {}; ",
                list_repr(&unconfirmed)
            )
        };
        report.ok = false;
        report.kind = "cancelled".into();
        report.message = format!("Setup cancelled {when}: {stopped}{cleanup}");
        report.elapsed = started.elapsed();
        report
    }

    /// Bring the containers to what the configuration wants (see the lifetime table).
    pub async fn setup(&self, cx: &Ctx) -> Report {
        let started = Instant::now();
        let (_locks, observed) = if self.opts.lock {
            match self.lock_and_probe(cx).await {
                Ok(locked) => (Some(locked._holders), locked.observed),
                Err(f) => return self.lock_report(f, started),
            }
        } else {
            let hosts = self.cluster.hosts().to_vec();
            (None, self.probe(&hosts, cx).await)
        };
        let plan = plan_setup(&self.desired(), &observed);
        let mut report = self.report_from("setup", &plan, &observed, started);
        if !plan.proceeds() {
            return report;
        }
        if cx.cancelled() {
            return self
                .stopped(report, "before any change", &[], &[], cx, started)
                .await;
        }
        let obs: HashMap<&str, &Observation> = observed
            .iter()
            .filter_map(|(h, o)| o.as_ref().ok().map(|o| (h.as_str(), o)))
            .collect();
        let hosts_with = |pred: &dyn Fn(HostAction) -> bool| -> Vec<String> {
            plan.hosts
                .iter()
                .filter(|p| pred(p.action))
                .map(|p| p.host.clone())
                .collect()
        };

        // 1. Remove what is replaced (per_run leftovers, unfinished containers, drifted
        //    containers with opt-in): each removal checked before anything is launched.
        let recreate = hosts_with(&|a| a == HostAction::Recreate);
        for (h, removal) in self.remove_existing(&recreate, cx).await {
            if let Removal::Failed(why) = removal {
                if cx.cancelled() {
                    break;
                }
                return fail(
                    report,
                    &h,
                    format!("removing the old container failed: {why}"),
                    String::new(),
                    started,
                );
            }
        }
        if cx.cancelled() {
            return self
                .stopped(
                    report,
                    "while removing the old containers",
                    &[],
                    &[],
                    cx,
                    started,
                )
                .await;
        }

        // 2. Load the image tar where the image is missing.
        let creating = hosts_with(&HostAction::creates);
        if let Some(tar) = &self.spec.image_tar {
            let jobs: Vec<(String, JobSpec)> = creating
                .iter()
                .filter(|h| {
                    obs.get(h.as_str())
                        .is_some_and(|o| o.local_image.is_empty())
                })
                .map(|h| {
                    self.step(cx, h, "load");
                    let cmd = render::load_image_command(self.prefix(h), tar);
                    (h.clone(), Self::job(cmd, Duration::from_secs(600)))
                })
                .collect();
            let loaded = self.run(jobs, cx).await;
            if cx.cancelled() {
                return self
                    .stopped(report, "while loading the image", &loaded, &[], cx, started)
                    .await;
            }
            if let Some(r) = loaded.iter().find(|r| r.status != Status::Ok) {
                return fail(
                    report,
                    &r.host,
                    failure(r, "loading the image tar"),
                    output_of(r),
                    started,
                );
            }
        }

        // 3. Launch / start.
        let mut jobs = Vec::new();
        for p in &plan.hosts {
            let Some(o) = obs.get(p.host.as_str()) else {
                continue;
            };
            let cmd = match p.action {
                HostAction::Launch | HostAction::Recreate => match self.run_command_for(o) {
                    Ok(c) => {
                        self.step(cx, &p.host, "launch");
                        Ok(c)
                    }
                    Err(why) => return fail(report, &p.host, why, String::new(), started),
                },
                HostAction::Start => {
                    self.step(cx, &p.host, "start");
                    rl::start_command(o.privilege.prefix(), &self.name)
                }
                _ => continue,
            };
            jobs.push((p.host.clone(), Self::job(cmd, self.opts.start_timeout)));
        }
        let launched = self.run(jobs, cx).await;
        if cx.cancelled() {
            return self
                .stopped(report, "during launch", &launched, &creating, cx, started)
                .await;
        }
        let mut created: Vec<String> = Vec::new();
        let mut launch_failed: Vec<&HostResult> = Vec::new();
        for r in &launched {
            let action = plan
                .hosts
                .iter()
                .find(|p| p.host == r.host)
                .map(|p| p.action);
            if r.status != Status::Ok {
                launch_failed.push(r);
                continue;
            }
            let Some(h) = report.hosts.iter_mut().find(|h| h.host == r.host) else {
                continue;
            };
            h.running = true;
            if action.is_some_and(HostAction::creates) {
                created.push(r.host.clone());
                // `docker run -d` prints the new ID (`docker start` prints the name instead:
                // a started container keeps the ID the probe saw).
                let id = String::from_utf8_lossy(&r.stdout).trim().to_owned();
                if !id.is_empty() && !id.contains(char::is_whitespace) {
                    h.container_id = id;
                }
                h.config_hash = self.hash.clone();
                h.unfinished = true;
            }
        }
        if !launch_failed.is_empty() {
            let names: Vec<String> = launch_failed.iter().map(|r| r.host.clone()).collect();
            for r in &launch_failed {
                if let Some(h) = report.hosts.iter_mut().find(|h| h.host == r.host) {
                    h.ok = false;
                    h.detail = failure(r, "container start");
                    h.output = output_of(r);
                }
            }
            // Containers made by this run hold nothing of the user's yet: remove them, so a
            // failed cold start does not leave a partial persistent set behind.
            let what = format!("Container startup failed on hosts: {}", list_repr(&names));
            return self
                .abandon(report, "launch_failed", what, &creating, cx, started)
                .await;
        }

        // 4. Provision the fresh containers only.
        if !created.is_empty() {
            let prov = self.provision(&created, cx).await;
            if cx.cancelled() {
                return self
                    .stopped(report, "during provisioning", &prov, &creating, cx, started)
                    .await;
            }
            let bad: Vec<String> = prov
                .iter()
                .filter(|r| r.status != Status::Ok)
                .map(|r| r.host.clone())
                .collect();
            for r in &prov {
                if let Some(h) = report.hosts.iter_mut().find(|h| h.host == r.host) {
                    h.output = output_of(r);
                    if r.status != Status::Ok {
                        h.ok = false;
                        h.detail = format!(
                            "Container provisioning failed (setup_script: {}, {})",
                            self.spec.setup_script,
                            failure(r, "script")
                        );
                    }
                }
            }
            if !bad.is_empty() {
                let what = format!("Container provisioning failed on {}", list_repr(&bad));
                return self
                    .abandon(report, "provision_failed", what, &creating, cx, started)
                    .await;
            }
        }

        // 5. Record completion, only now that the setup script succeeded on every host (a
        //    record is what later runs trust), and restore the records a previous run's
        //    interruption left missing.
        let restore: Vec<String> = plan
            .hosts
            .iter()
            .filter(|p| p.restore_record)
            .map(|p| p.host.clone())
            .collect();
        let mut to_record: Vec<(String, String)> = created
            .iter()
            .map(|h| (h.clone(), self.opts.run_id.clone()))
            .collect();
        for h in &restore {
            // Restored with the run that provisioned it, not this one.
            let run = obs
                .get(h.as_str())
                .and_then(|o| o.container.as_ref())
                .map(|c| c.run_id.clone())
                .unwrap_or_default();
            to_record.push((h.clone(), run));
        }
        if !to_record.is_empty() {
            let recorded = self.record(&to_record, cx).await;
            if cx.cancelled() {
                return self
                    .stopped(
                        report,
                        "while recording provisioning",
                        &recorded,
                        &creating,
                        cx,
                        started,
                    )
                    .await;
            }
            let bad: Vec<&HostResult> = recorded
                .iter()
                .filter(|r| r.status != Status::Ok && created.contains(&r.host))
                .collect();
            for r in &recorded {
                if r.status != Status::Ok && restore.contains(&r.host) {
                    report.warnings.push(format!(
                        "could not restore the provisioning record on {}: {}",
                        r.host,
                        failure(r, "record")
                    ));
                }
            }
            if !bad.is_empty() {
                let names: Vec<String> = bad.iter().map(|r| r.host.clone()).collect();
                for r in &bad {
                    mark(&mut report.hosts, r, "recording provisioning");
                }
                let what = format!("Could not record provisioning on {}", list_repr(&names));
                return self
                    .abandon(report, "provision_failed", what, &creating, cx, started)
                    .await;
            }
            for h in report.hosts.iter_mut() {
                if created.contains(&h.host) {
                    h.unfinished = false;
                }
            }
        }

        // Remember what this setup left: fresh or restarted containers run no sshd yet.
        let mut left = observed.clone();
        for (h, o) in left.iter_mut() {
            if let Ok(o) = o {
                let action = plan.hosts.iter().find(|p| &p.host == h).map(|p| p.action);
                if matches!(
                    action,
                    Some(HostAction::Launch | HostAction::Recreate | HostAction::Start)
                ) {
                    o.sshd = Sshd::Down;
                    let c = o.container.get_or_insert_with(ContainerInfo::default);
                    c.running = true;
                    c.status = "running".into();
                    if action.is_some_and(HostAction::creates) {
                        c.run_id = self.opts.run_id.clone();
                        c.state_file = rl::STATE_FILE.into();
                        c.provisioned_by = Some(self.opts.run_id.clone());
                    }
                }
                if let Some(c) = o.container.as_mut()
                    && restore.contains(h)
                {
                    c.provisioned_by = Some(c.run_id.clone());
                }
                if let Some(r) = report.hosts.iter().find(|r| &r.host == h)
                    && let Some(c) = o.container.as_mut()
                    && !r.container_id.is_empty()
                {
                    c.id = r.container_id.clone();
                }
            }
        }
        if let Ok(mut g) = self.after_setup.lock() {
            *g = Some((Instant::now(), left));
        }
        report.message = match plan.kind {
            crate::lifecycle::DecisionKind::Launch => format!(
                "{} (launched and provisioned on {} hosts)",
                plan.message,
                created.len()
            ),
            _ => plan.message.clone(),
        };
        report.elapsed = started.elapsed();
        report
    }

    async fn provision(&self, hosts: &[String], cx: &Ctx) -> Vec<HostResult> {
        let mut jobs = Vec::with_capacity(hosts.len());
        let payload = Arc::new(self.script.clone());
        for h in hosts {
            self.step(cx, h, "provision");
            let mut job = if self.opts.inline_provision {
                let cmd = render::provision_command(
                    &self.script,
                    &format!("container.setup_script '{}'", self.spec.setup_script),
                )
                .and_then(|inner| rl::job_exec_command(self.prefix(h), &self.name, &inner, false));
                self.container_job(h, cmd, self.opts.provision_timeout)
            } else {
                let cmd =
                    rl::job_exec_command(self.prefix(h), &self.name, render::STDIN_RUNNER, true);
                let mut j = self.container_job(h, cmd, self.opts.provision_timeout);
                j.input = Input::Bytes(payload.clone());
                j
            };
            job.timeout = Some(self.opts.provision_timeout);
            jobs.push((h.clone(), job));
        }
        self.run(jobs, cx).await
    }

    /// Write the provisioning record (host, run that provisioned it) into the containers.
    async fn record(&self, hosts: &[(String, String)], cx: &Ctx) -> Vec<HostResult> {
        let jobs = hosts
            .iter()
            .map(|(h, run)| {
                self.step(cx, h, "record");
                let cmd = rl::record_command(self.prefix(h), &self.name, run);
                (h.clone(), Self::job(cmd, Duration::from_secs(60)))
            })
            .collect();
        self.run(jobs, cx).await
    }

    /// Start sshd on `sshd_port` in every container where it is not running (idempotent), with
    /// the SSH user's own keys; prove on each host that the listener is this container's, and
    /// readiness with an SSH banner from the head node.
    pub async fn setup_sshd(&self, cx: &Ctx) -> Report {
        let started = Instant::now();
        let port = self.opts.sshd_port;
        let hosts = self.cluster.hosts().to_vec();
        let recent = self
            .after_setup
            .lock()
            .ok()
            .and_then(|mut g| g.take())
            .filter(|(at, _)| at.elapsed() < SETUP_STATE_TTL)
            .map(|(_, o)| o);
        let observed = match recent {
            Some(o) => o,
            None => self.probe(&hosts, cx).await,
        };
        let mut reports: Vec<HostReport> = Vec::new();
        let mut needing = Vec::new();
        for (h, o) in &observed {
            let mut r = HostReport {
                host: h.clone(),
                action: "sshd".into(),
                ..HostReport::default()
            };
            match o {
                Ok(o) => {
                    fill(&mut r, Some(o));
                    if !r.running {
                        r.detail = "container not running".into();
                    } else if r.unfinished {
                        r.detail = "the container's provisioning never completed: run up again \
                                    (it replaces the container)"
                            .into();
                    } else if let Some(holder) = o.sshd.holder() {
                        r.detail = format!(
                            "port {port} is held by {holder}, not by container '{}': choose \
                             another sshd port or stop it",
                            self.name
                        );
                    } else if o.sshd_up() {
                        r.ok = true;
                        r.action = "skip".into();
                        r.detail = format!("sshd already listening on {port}");
                    } else {
                        needing.push(h.clone());
                        r.action = "start".into();
                    }
                }
                Err(e) => r.detail = format!("probe failed: {e}"),
            }
            reports.push(r);
        }
        let mut failed: Vec<String> = reports
            .iter()
            .filter(|r| !r.ok && r.action != "start")
            .map(|r| r.host.clone())
            .collect();
        let jobs = needing
            .iter()
            .map(|h| {
                self.step(cx, h, "sshd-keys");
                let cmd = rl::copy_ssh_keys_command(self.prefix(h), &self.name);
                (
                    h.clone(),
                    self.container_job(h, cmd, Duration::from_secs(60)),
                )
            })
            .collect();
        for r in self.run(jobs, cx).await {
            if r.status != Status::Ok {
                mark(&mut reports, &r, "copying the SSH keys");
                failed.push(r.host.clone());
            }
        }
        needing.retain(|h| !failed.contains(h));
        let jobs = needing
            .iter()
            .map(|h| {
                self.step(cx, h, "sshd");
                let cmd = rl::start_sshd_command(self.prefix(h), &self.name, port);
                (
                    h.clone(),
                    self.container_job(h, cmd, Duration::from_secs(60)),
                )
            })
            .collect();
        for r in self.run(jobs, cx).await {
            if r.status == Status::Ok {
                continue;
            }
            let out = String::from_utf8_lossy(&r.stdout);
            let state = out
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("sshd="))
                .map(Sshd::parse);
            mark(&mut reports, &r, "starting sshd");
            if let Some(rep) = reports.iter_mut().find(|x| x.host == r.host)
                && let Some(holder) = state.as_ref().and_then(Sshd::holder)
            {
                rep.sshd_holder = holder.clone();
                rep.detail = format!(
                    "port {port} is held by {holder}, not by container '{}': choose another \
                     sshd port or stop it",
                    self.name
                );
            }
            failed.push(r.host.clone());
        }
        // Reachability: an SSH banner on every host's port, seen from the head node — whenever
        // an sshd was started by this call (its ownership was proven on its host). When every
        // host already listened, that is CVS's idempotent precheck and no extra round trip is
        // spent.
        let check_hosts: Vec<String> = reports
            .iter()
            .filter(|r| !failed.contains(&r.host))
            .map(|r| r.host.clone())
            .collect();
        if !check_hosts.is_empty() && !needing.is_empty() && !cx.cancelled() {
            let head = hosts[0].clone();
            self.step(cx, &head, "sshd-ready");
            let script = rl::banner_check_script(&check_hosts, port, 30);
            let r = self
                .run(
                    vec![(
                        head.clone(),
                        Self::job(
                            script,
                            Duration::from_secs(60 + 3 * check_hosts.len() as u64),
                        ),
                    )],
                    cx,
                )
                .await
                .remove(0);
            let out = String::from_utf8_lossy(&r.stdout).into_owned();
            for rep in reports.iter_mut().filter(|x| check_hosts.contains(&x.host)) {
                if out.lines().any(|l| l == format!("ready={}", rep.host)) {
                    rep.ok = true;
                    rep.sshd_up = true;
                    if rep.action == "start" {
                        rep.detail = format!("sshd started on {port}");
                    }
                } else {
                    rep.ok = false;
                    rep.detail = format!(
                        "SSH daemon validation failed: no SSH banner on port {port} from the head \
                         node {head}"
                    );
                    if r.status != Status::Ok {
                        rep.output = output_of(&r);
                    }
                    failed.push(rep.host.clone());
                }
            }
        }
        let ok = failed.is_empty() && !cx.cancelled();
        let started_n = reports
            .iter()
            .filter(|r| r.action == "start" && r.ok)
            .count();
        Report {
            op: "setup_sshd",
            kind: if cx.cancelled() {
                "cancelled".into()
            } else if ok {
                "sshd_ready".into()
            } else {
                "sshd_failed".into()
            },
            ok,
            message: if cx.cancelled() {
                "sshd setup cancelled: remote work stopped; nothing is removed".into()
            } else if ok {
                format!(
                    "sshd answering on port {port} on all {} hosts ({} started, {} already \
                     running)",
                    reports.len(),
                    started_n,
                    reports.len() - started_n
                )
            } else {
                format!("sshd setup failed on hosts: {}", list_repr(&failed))
            },
            hosts: reports,
            warnings: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// Remove per_run containers; keep persistent and no_launch ones. With `orphans`, also
    /// remove this owner's per_run containers left by crashed runs (found by label). Every
    /// removal is checked: "removed" is reported only when no container is left.
    pub async fn teardown(&self, orphans: bool, cx: &Ctx) -> Report {
        let started = Instant::now();
        if let Ok(mut g) = self.after_setup.lock() {
            *g = None;
        }
        let hosts = self.cluster.hosts().to_vec();
        let mut reports: Vec<HostReport> = hosts
            .iter()
            .map(|h| HostReport {
                host: h.clone(),
                action: "keep".into(),
                ok: true,
                detail: format!("{} container kept", self.spec.lifetime.as_str()),
                ..HostReport::default()
            })
            .collect();
        let needs_privilege = self.spec.lifetime == Lifetime::PerRun || orphans;
        if needs_privilege
            && self
                .privileges
                .lock()
                .map(|p| p.len() < hosts.len())
                .unwrap_or(true)
        {
            self.probe(&hosts, cx).await;
        }
        if self.spec.lifetime == Lifetime::PerRun {
            for (h, removal) in self.remove_existing(&hosts, cx).await {
                if let Some(rep) = reports.iter_mut().find(|x| x.host == h) {
                    rep.action = "remove".into();
                    rep.detail = match removal {
                        Removal::Removed => "removed".into(),
                        Removal::Absent => "absent: nothing to remove".into(),
                        Removal::Kept(_) => unreachable!("a plain removal keeps nothing"),
                        Removal::Failed(why) => {
                            rep.ok = false;
                            format!("could not remove: {why}")
                        }
                    };
                }
            }
        }
        if orphans && !self.opts.owner.is_empty() && !cx.cancelled() {
            let jobs = hosts
                .iter()
                .map(|h| {
                    let cmd = rl::list_per_run_command(self.prefix(h), &self.opts.owner);
                    (h.clone(), Self::job(cmd, Duration::from_secs(60)))
                })
                .collect();
            let listed = self.run(jobs, cx).await;
            let mut removals = Vec::new();
            for r in &listed {
                for line in String::from_utf8_lossy(&r.stdout).lines() {
                    let name = line.split('|').next().unwrap_or("").trim();
                    if crate::config::is_valid_container_name(name) {
                        // A name that passed validation always renders.
                        if let Ok(cmd) = rl::remove_verified_command(self.prefix(&r.host), name) {
                            removals.push((r.host.clone(), name.to_owned(), cmd));
                        }
                    }
                }
            }
            // Several orphans may sit on one host: remove them host by host, in rounds.
            while !removals.is_empty() && !cx.cancelled() {
                let mut round = Vec::new();
                let mut rest = Vec::new();
                for item in removals {
                    if round
                        .iter()
                        .any(|(h, _, _): &(String, String, String)| *h == item.0)
                    {
                        rest.push(item);
                    } else {
                        round.push(item);
                    }
                }
                let jobs = round
                    .iter()
                    .map(|(h, _, cmd)| (h.clone(), Self::job(Ok(cmd.clone()), REMOVE_TIMEOUT)))
                    .collect();
                for (r, (_, name, _)) in self.run(jobs, cx).await.iter().zip(&round) {
                    if let Some(rep) = reports.iter_mut().find(|x| x.host == r.host) {
                        match Removal::from_result(r) {
                            Removal::Failed(why) => {
                                rep.ok = false;
                                rep.detail.push_str(&format!("; orphan {name}: {why}"));
                            }
                            _ => rep.detail.push_str(&format!("; orphan {name} removed")),
                        }
                    }
                }
                removals = rest;
            }
        }
        let ok = reports.iter().all(|r| r.ok) && !cx.cancelled();
        let removed = reports
            .iter()
            .filter(|r| r.action == "remove" && r.ok)
            .count();
        Report {
            op: "teardown",
            kind: if cx.cancelled() {
                "cancelled".into()
            } else if self.spec.lifetime == Lifetime::PerRun {
                "removed".into()
            } else {
                "kept".into()
            },
            ok,
            message: if cx.cancelled() {
                "teardown cancelled; see the hosts for what was removed".into()
            } else if self.spec.lifetime == Lifetime::PerRun {
                let failed: Vec<&str> = reports
                    .iter()
                    .filter(|r| !r.ok)
                    .map(|r| r.host.as_str())
                    .collect();
                if failed.is_empty() {
                    format!(
                        "Removed per_run container '{}' on {} hosts",
                        self.name,
                        hosts.len()
                    )
                } else {
                    format!(
                        "Removed per_run container '{}' on {removed} of {} hosts; could not \
                         remove it on {}",
                        self.name,
                        hosts.len(),
                        list_repr(&failed)
                    )
                }
            } else {
                format!(
                    "{} container '{}' left running (teardown never removes it)",
                    self.spec.lifetime.as_str(),
                    self.name
                )
            },
            hosts: reports,
            warnings: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// Jobs running a command inside the container on each host (`bash -c`), with each host's
    /// privilege prefix (probing once if unknown) and the job marker, so a timeout or a
    /// cancellation kills the command's processes inside the container too.
    pub async fn exec_jobs(
        &self,
        hosts: &[String],
        cmd: &str,
        timeout: Option<Duration>,
        cx: &Ctx,
    ) -> crate::error::Result<Vec<(String, JobSpec)>> {
        let unknown: Vec<String> = {
            let p = self
                .privileges
                .lock()
                .map_err(|_| crate::error::Error::InvalidArgument("poisoned".into()))?;
            hosts
                .iter()
                .filter(|h| !p.contains_key(*h))
                .cloned()
                .collect()
        };
        if !unknown.is_empty() {
            self.probe(&unknown, cx).await;
        }
        hosts
            .iter()
            .map(|h| {
                let cmd = rl::job_exec_command(self.prefix(h), &self.name, cmd, false)?;
                let mut j = JobSpec::new(cmd, Input::None)?;
                j.timeout = timeout;
                j.kill_prefix = self.prefix(h).to_owned();
                Ok((h.clone(), j))
            })
            .collect()
    }
}

fn fill(r: &mut HostReport, o: Option<&Observation>) {
    let Some(o) = o else { return };
    r.local_image = o.local_image.clone();
    r.sshd_up = o.sshd_up();
    r.sshd_holder = o.sshd.holder().unwrap_or_default();
    if let Some(c) = &o.container {
        r.container_id = c.id.clone();
        r.started_at = c.started_at.clone();
        r.container_image = c.image_id.clone();
        r.config_hash = c.config_hash.clone();
        r.running = c.running;
        r.unfinished = c.unfinished();
    }
}

fn mark(reports: &mut [HostReport], r: &HostResult, what: &str) {
    if let Some(rep) = reports.iter_mut().find(|x| x.host == r.host) {
        rep.ok = false;
        rep.detail = failure(r, what);
        rep.output = output_of(r);
    }
}

fn fail(mut report: Report, host: &str, why: String, output: String, started: Instant) -> Report {
    if let Some(h) = report.hosts.iter_mut().find(|h| h.host == host) {
        h.ok = false;
        h.detail = why.clone();
        h.output = output;
    }
    report.ok = false;
    report.kind = "failed".into();
    report.message = format!("setup failed on {host}: {why}");
    report.elapsed = started.elapsed();
    report
}
