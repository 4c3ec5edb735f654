//! The native container driver: runs the pure plan (`lifecycle::plan`) over the fan-out engine.
//! One probe round trip per host, a per-host lock for the whole setup, launch with labels and
//! per-host devices, provisioning over stdin, idempotent sshd proven by an SSH banner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::cluster::{Cluster, EventSink, Holder, Phase, emit};
use super::job::{Input, JobSpec};
use super::result::{HostResult, Status};
use crate::config::{ContainerSpec, DEFAULT_DEVICES, Lifetime};
use crate::lifecycle::observe::{Observation, Privilege, parse_probe};
use crate::lifecycle::plan::{Desired, HostAction, Plan, config_hash, host_spec, plan_setup};
use crate::render::lifecycle as rl;
use crate::render::{self, RunOptions};

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

/// Locks held on every host, and what the probe that ran under them saw.
struct Locked {
    _holders: Vec<Holder>,
    observed: Vec<(String, Result<Observation, String>)>,
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

pub struct Driver {
    cluster: Arc<Cluster>,
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

impl Driver {
    pub fn new(
        cluster: Arc<Cluster>,
        spec: ContainerSpec,
        script: Vec<u8>,
        opts: LifecycleOptions,
    ) -> crate::error::Result<Self> {
        let name = spec.name.clone().ok_or_else(|| {
            crate::error::Error::InvalidArgument("the container spec has no name".into())
        })?;
        let image = spec.image.clone().ok_or_else(|| {
            crate::error::Error::InvalidArgument("the container spec has no image".into())
        })?;
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

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    fn step(&self, events: &Option<EventSink>, host: &str, step: &'static str) {
        emit(
            events,
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

    async fn run(&self, jobs: Vec<(String, JobSpec)>) -> Vec<HostResult> {
        let (_tx, rx) = watch::channel(false);
        self.cluster.run_many(jobs, None, rx).await
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
        events: &Option<EventSink>,
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
            self.step(events, h, "probe");
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
        let results = self.run(jobs).await;
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
    pub async fn run_op(&self, op: Op, events: &Option<EventSink>) -> Report {
        match op {
            Op::Plan => self.plan(events).await,
            Op::Setup => self.setup(events).await,
            Op::SetupSshd => self.setup_sshd(events).await,
            Op::Teardown { orphans } => self.teardown(orphans, events).await,
            Op::Status => self.status(events).await,
        }
    }

    /// What `setup` would do on each host and why. Changes nothing.
    pub async fn plan(&self, events: &Option<EventSink>) -> Report {
        let started = Instant::now();
        let hosts = self.cluster.hosts().to_vec();
        let observed = self.probe(&hosts, events).await;
        let plan = plan_setup(&self.desired(), &observed);
        self.report_from("plan", &plan, &observed, started)
    }

    /// Per-host state: running, IDs, start time, images, config hash, sshd.
    pub async fn status(&self, events: &Option<EventSink>) -> Report {
        let started = Instant::now();
        let hosts = self.cluster.hosts().to_vec();
        let observed = self.probe(&hosts, events).await;
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
                        r.ok = r.running;
                        r.detail = match &o.container {
                            None => "absent".into(),
                            Some(c) if !c.config_hash.is_empty() && c.config_hash != self.hash => {
                                format!(
                                    "{} (drifted: config hash {} != {})",
                                    c.status, c.config_hash, self.hash
                                )
                            }
                            Some(c) => c.status.clone(),
                        };
                    }
                    Err(e) => r.detail = format!("probe failed: {e}"),
                }
                ok &= r.ok;
                r
            })
            .collect();
        let running = reports.iter().filter(|r| r.running).count();
        Report {
            op: "status",
            kind: "status".into(),
            ok,
            message: format!(
                "Container '{}' running on {running}/{} hosts",
                self.name,
                reports.len()
            ),
            hosts: reports,
            warnings: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// Lock every host for this container name and probe it in the same round trip: the head
    /// node first, then the rest in parallel, so two concurrent setups serialize at the head
    /// instead of deadlocking across hosts.
    async fn lock_and_probe(&self, events: &Option<EventSink>) -> Result<Locked, (String, String)> {
        let probe = self
            .probe_script()
            .map_err(|e| (String::new(), e.to_string()))?;
        let cmd =
            rl::lock_and_probe_command(&self.name, self.opts.lock_wait.as_secs() as u32, &probe)
                .map_err(|e| (String::new(), e.to_string()))?;
        let hosts = self.cluster.hosts().to_vec();
        let wait = self.opts.lock_wait + Duration::from_secs(5);
        let (head, rest) = hosts
            .split_first()
            .ok_or((String::new(), "no hosts".into()))?;
        // Connecting is the slow part: do it for every host at once, before the head-first
        // lock order serializes anything.
        for h in &hosts {
            self.step(events, h, "connect");
        }
        if let Some(r) = self.cluster.connect(&hosts).await.into_iter().next() {
            return Err((
                r.host.clone(),
                format!("{}: {}", r.status.as_str(), r.error.unwrap_or_default()),
            ));
        }
        self.step(events, head, "lock");
        let first = self
            .cluster
            .hold(head, &cmd, rl::PROBE_DONE, wait)
            .await
            .map_err(|r| (head.clone(), r.error.unwrap_or_default()))?;
        let mut got: Vec<(usize, (Holder, String))> = vec![(0, first)];
        let mut pending = tokio::task::JoinSet::new();
        for (i, h) in rest.iter().enumerate() {
            self.step(events, h, "lock");
            let cluster = self.cluster.clone();
            let (h, cmd) = (h.clone(), cmd.clone());
            pending.spawn(async move {
                let held = cluster.hold(&h, &cmd, rl::PROBE_DONE, wait).await;
                (i + 1, h, held)
            });
        }
        let mut err = None;
        while let Some(joined) = pending.join_next().await {
            match joined {
                Ok((i, _, Ok(held))) => got.push((i, held)),
                Ok((_, h, Err(r))) => err = Some((h, r.error.unwrap_or_default())),
                Err(e) => err = Some((String::new(), e.to_string())),
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

    /// The `docker run` for one host: per-host home in the default volumes, default devices only
    /// where they exist, cvs-core labels.
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
            ],
            pull: self.opts.pull.clone(),
        };
        render::docker_run_command(&spec, &opts).map_err(|e| e.to_string())
    }

    async fn remove(&self, hosts: &[String]) -> Vec<HostResult> {
        let jobs = hosts
            .iter()
            .map(|h| {
                let cmd = render::remove_command(self.prefix(h), &self.name, true);
                (h.clone(), Self::job(cmd, Duration::from_secs(60)))
            })
            .collect();
        self.run(jobs).await
    }

    /// Bring the containers to what the configuration wants (see the lifetime table).
    pub async fn setup(&self, events: &Option<EventSink>) -> Report {
        let started = Instant::now();
        let (_locks, observed) = if self.opts.lock {
            match self.lock_and_probe(events).await {
                Ok(locked) => (Some(locked._holders), locked.observed),
                Err((host, why)) => {
                    return Report {
                        op: "setup",
                        kind: "lock_failed".into(),
                        ok: false,
                        message: format!(
                            "Could not lock container '{}' on {host}: {why}. Nothing was changed.",
                            self.name
                        ),
                        hosts: self
                            .cluster
                            .hosts()
                            .iter()
                            .map(|h| HostReport {
                                host: h.clone(),
                                action: "refuse".into(),
                                detail: if *h == host {
                                    why.clone()
                                } else {
                                    "not changed: another host could not be locked".into()
                                },
                                ..HostReport::default()
                            })
                            .collect(),
                        warnings: Vec::new(),
                        elapsed: started.elapsed(),
                    };
                }
            }
        } else {
            let hosts = self.cluster.hosts().to_vec();
            (None, self.probe(&hosts, events).await)
        };
        let plan = plan_setup(&self.desired(), &observed);
        let mut report = self.report_from("setup", &plan, &observed, started);
        if !plan.proceeds() {
            return report;
        }
        let obs: HashMap<&str, &Observation> = observed
            .iter()
            .filter_map(|(h, o)| o.as_ref().ok().map(|o| (h.as_str(), o)))
            .collect();

        // 1. Remove what is replaced (per_run leftovers, drifted containers with opt-in).
        let recreate: Vec<String> = plan
            .hosts
            .iter()
            .filter(|p| p.action == HostAction::Recreate)
            .map(|p| p.host.clone())
            .collect();
        for r in self.remove(&recreate).await {
            if r.status != Status::Ok {
                return fail(
                    report,
                    &r.host,
                    failure(&r, "removing the old container"),
                    output_of(&r),
                    started,
                );
            }
        }

        // 2. Load the image tar where the image is missing.
        let creating: Vec<String> = plan
            .hosts
            .iter()
            .filter(|p| p.action.creates())
            .map(|p| p.host.clone())
            .collect();
        if let Some(tar) = &self.spec.image_tar {
            let jobs: Vec<(String, JobSpec)> = creating
                .iter()
                .filter(|h| {
                    obs.get(h.as_str())
                        .is_some_and(|o| o.local_image.is_empty())
                })
                .map(|h| {
                    self.step(events, h, "load");
                    let cmd = render::load_image_command(self.prefix(h), tar);
                    (h.clone(), Self::job(cmd, Duration::from_secs(600)))
                })
                .collect();
            for r in self.run(jobs).await {
                if r.status != Status::Ok {
                    return fail(
                        report,
                        &r.host,
                        failure(&r, "loading the image tar"),
                        output_of(&r),
                        started,
                    );
                }
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
                        self.step(events, &p.host, "launch");
                        Ok(c)
                    }
                    Err(why) => return fail(report, &p.host, why, String::new(), started),
                },
                HostAction::Start => {
                    self.step(events, &p.host, "start");
                    rl::start_command(o.privilege.prefix(), &self.name)
                }
                _ => continue,
            };
            jobs.push((p.host.clone(), Self::job(cmd, self.opts.start_timeout)));
        }
        let launched = self.run(jobs).await;
        let mut created: Vec<String> = Vec::new();
        let mut launch_failed: Vec<&HostResult> = Vec::new();
        for r in &launched {
            let action = plan
                .hosts
                .iter()
                .find(|p| p.host == r.host)
                .map(|p| p.action);
            if r.status == Status::Ok {
                if action.is_some_and(HostAction::creates) {
                    created.push(r.host.clone());
                }
                if let Some(h) = report.hosts.iter_mut().find(|h| h.host == r.host) {
                    let id = String::from_utf8_lossy(&r.stdout).trim().to_owned();
                    if !id.is_empty() && !id.contains(char::is_whitespace) {
                        h.container_id = id;
                    }
                    h.running = true;
                    h.config_hash = self.hash.clone();
                }
            } else {
                launch_failed.push(r);
            }
        }
        if !launch_failed.is_empty() {
            // Containers made by this call hold nothing of the user's yet: remove them, so a
            // failed cold start does not leave a partial persistent set behind.
            self.remove(&created).await;
            let names: Vec<String> = launch_failed.iter().map(|r| r.host.clone()).collect();
            for r in &launch_failed {
                if let Some(h) = report.hosts.iter_mut().find(|h| h.host == r.host) {
                    h.ok = false;
                    h.detail = failure(r, "container start");
                    h.output = output_of(r);
                }
            }
            report.ok = false;
            report.kind = "launch_failed".into();
            report.message = format!(
                "Container startup failed on hosts: {}; removed the {} container(s) this run created",
                crate::config::pyrepr::list_repr(&names),
                created.len()
            );
            report.elapsed = started.elapsed();
            return report;
        }

        // 4. Provision the fresh containers only.
        if !created.is_empty() {
            let prov = self.provision(&created, events).await;
            let bad: Vec<&HostResult> = prov.iter().filter(|r| r.status != Status::Ok).collect();
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
                self.remove(&created).await;
                let names: Vec<String> = bad.iter().map(|r| r.host.clone()).collect();
                report.ok = false;
                report.kind = "provision_failed".into();
                report.message = format!(
                    "Container provisioning failed on {}; removed the {} container(s) this run created",
                    crate::config::pyrepr::list_repr(&names),
                    created.len()
                );
                report.elapsed = started.elapsed();
                return report;
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
                    o.sshd_up = false;
                    if let Some(c) = o.container.as_mut() {
                        c.running = true;
                    } else {
                        o.container = Some(crate::lifecycle::observe::ContainerInfo {
                            running: true,
                            status: "running".into(),
                            ..Default::default()
                        });
                    }
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

    async fn provision(&self, hosts: &[String], events: &Option<EventSink>) -> Vec<HostResult> {
        let mut jobs = Vec::with_capacity(hosts.len());
        let payload = Arc::new(self.script.clone());
        for h in hosts {
            self.step(events, h, "provision");
            let job = if self.opts.inline_provision {
                render::provision_command(
                    &self.script,
                    &format!("container.setup_script '{}'", self.spec.setup_script),
                )
                .and_then(|inner| {
                    render::docker_exec_command(self.prefix(h), &self.name, &inner, false)
                })
                .map(|cmd| Self::job(Ok(cmd), self.opts.provision_timeout))
            } else {
                render::provision_stdin_command(self.prefix(h), &self.name).and_then(|cmd| {
                    let mut j = JobSpec::new(cmd, Input::Bytes(payload.clone()))?;
                    j.timeout = Some(self.opts.provision_timeout);
                    Ok(j)
                })
            };
            match job {
                Ok(j) => jobs.push((h.clone(), j)),
                Err(e) => {
                    return hosts
                        .iter()
                        .map(|h| {
                            HostResult::failed(h, Status::Error, e.to_string(), Duration::ZERO)
                        })
                        .collect();
                }
            }
        }
        self.run(jobs).await
    }

    /// Start sshd on `sshd_port` in every container where it is not running (idempotent), with
    /// the SSH user's own keys, and prove readiness with an SSH banner from the head node.
    pub async fn setup_sshd(&self, events: &Option<EventSink>) -> Report {
        let started = Instant::now();
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
            None => self.probe(&hosts, events).await,
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
                    } else if o.sshd_up {
                        r.ok = true;
                        r.action = "skip".into();
                        r.detail = format!("sshd already listening on {}", self.opts.sshd_port);
                    } else {
                        needing.push(h.clone());
                        r.action = "start".into();
                    }
                }
                Err(e) => r.detail = format!("probe failed: {e}"),
            }
            reports.push(r);
        }
        let not_running: Vec<String> = reports
            .iter()
            .filter(|r| !r.ok && r.action != "start")
            .map(|r| r.host.clone())
            .collect();
        let mut failed = not_running.clone();
        let jobs = needing
            .iter()
            .map(|h| {
                self.step(events, h, "sshd-keys");
                let cmd = rl::copy_ssh_keys_command(self.prefix(h), &self.name);
                (h.clone(), Self::job(cmd, Duration::from_secs(60)))
            })
            .collect();
        for r in self.run(jobs).await {
            if r.status != Status::Ok {
                mark(&mut reports, &r, "copying the SSH keys");
                failed.push(r.host.clone());
            }
        }
        needing.retain(|h| !failed.contains(h));
        let jobs = needing
            .iter()
            .map(|h| {
                self.step(events, h, "sshd");
                let cmd = rl::start_sshd_command(self.prefix(h), &self.name, self.opts.sshd_port);
                (h.clone(), Self::job(cmd, Duration::from_secs(60)))
            })
            .collect();
        for r in self.run(jobs).await {
            if r.status != Status::Ok {
                mark(&mut reports, &r, "starting sshd");
                failed.push(r.host.clone());
            }
        }
        // Readiness: an SSH banner on every host's port, seen from the head node — whenever an
        // sshd was started by this call. When every host already listened (the probe saw the
        // port), that is CVS's idempotent precheck and no extra round trip is spent.
        let check_hosts: Vec<String> = reports
            .iter()
            .filter(|r| !failed.contains(&r.host))
            .map(|r| r.host.clone())
            .collect();
        if !check_hosts.is_empty() && !needing.is_empty() {
            let head = hosts[0].clone();
            self.step(events, &head, "sshd-ready");
            let script = rl::banner_check_script(&check_hosts, self.opts.sshd_port, 30);
            let r = self
                .run(vec![(
                    head.clone(),
                    Self::job(
                        script,
                        Duration::from_secs(60 + 3 * check_hosts.len() as u64),
                    ),
                )])
                .await
                .remove(0);
            let out = String::from_utf8_lossy(&r.stdout).into_owned();
            for rep in reports.iter_mut().filter(|x| check_hosts.contains(&x.host)) {
                if out.lines().any(|l| l == format!("ready={}", rep.host)) {
                    rep.ok = true;
                    rep.sshd_up = true;
                    if rep.action == "start" {
                        rep.detail = format!("sshd started on {}", self.opts.sshd_port);
                    }
                } else {
                    rep.ok = false;
                    rep.detail = format!(
                        "SSH daemon validation failed: no SSH banner on port {} from the head node {head}",
                        self.opts.sshd_port
                    );
                    if r.status != Status::Ok {
                        rep.output = output_of(&r);
                    }
                    failed.push(rep.host.clone());
                }
            }
        }
        let ok = failed.is_empty();
        let started_n = reports
            .iter()
            .filter(|r| r.action == "start" && r.ok)
            .count();
        Report {
            op: "setup_sshd",
            kind: if ok {
                "sshd_ready".into()
            } else {
                "sshd_failed".into()
            },
            ok,
            message: if ok {
                format!(
                    "sshd answering on port {} on all {} hosts ({} started, {} already running)",
                    self.opts.sshd_port,
                    reports.len(),
                    started_n,
                    reports.len() - started_n
                )
            } else {
                format!(
                    "sshd setup failed on hosts: {}",
                    crate::config::pyrepr::list_repr(&failed)
                )
            },
            hosts: reports,
            warnings: Vec::new(),
            elapsed: started.elapsed(),
        }
    }

    /// Remove per_run containers; keep persistent and no_launch ones. With `orphans`, also
    /// remove this owner's per_run containers left by crashed runs (found by label).
    pub async fn teardown(&self, orphans: bool, events: &Option<EventSink>) -> Report {
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
            self.probe(&hosts, events).await;
        }
        if self.spec.lifetime == Lifetime::PerRun {
            for h in &hosts {
                self.step(events, h, "remove");
            }
            for r in self.remove(&hosts).await {
                mark_result(&mut reports, &r, "remove", "removed");
            }
        }
        if orphans && !self.opts.owner.is_empty() {
            let jobs = hosts
                .iter()
                .map(|h| {
                    let cmd = rl::list_per_run_command(self.prefix(h), &self.opts.owner);
                    (h.clone(), Self::job(cmd, Duration::from_secs(60)))
                })
                .collect();
            let listed = self.run(jobs).await;
            let mut removals = Vec::new();
            for r in &listed {
                for line in String::from_utf8_lossy(&r.stdout).lines() {
                    let name = line.split('|').next().unwrap_or("").trim();
                    if crate::config::is_valid_container_name(name) {
                        // A name that passed validation always renders.
                        if let Ok(cmd) = render::remove_command(self.prefix(&r.host), name, true) {
                            removals.push((r.host.clone(), name.to_owned(), cmd));
                        }
                    }
                }
            }
            // Several orphans may sit on one host: remove them host by host, in rounds.
            while !removals.is_empty() {
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
                    .map(|(h, _, cmd)| {
                        (
                            h.clone(),
                            Self::job(Ok(cmd.clone()), Duration::from_secs(60)),
                        )
                    })
                    .collect();
                for (r, (_, name, _)) in self.run(jobs).await.iter().zip(&round) {
                    if let Some(rep) = reports.iter_mut().find(|x| x.host == r.host) {
                        if r.status == Status::Ok {
                            rep.detail.push_str(&format!("; orphan {name} removed"));
                        } else {
                            rep.ok = false;
                            rep.detail
                                .push_str(&format!("; orphan {name}: {}", failure(r, "remove")));
                        }
                    }
                }
                removals = rest;
            }
        }
        let ok = reports.iter().all(|r| r.ok);
        Report {
            op: "teardown",
            kind: if self.spec.lifetime == Lifetime::PerRun {
                "removed".into()
            } else {
                "kept".into()
            },
            ok,
            message: if self.spec.lifetime == Lifetime::PerRun {
                format!(
                    "Removed per_run container '{}' on {} hosts",
                    self.name,
                    hosts.len()
                )
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

    /// Commands to run a command inside the container on each host (`bash -c`), with each
    /// host's privilege prefix (probing once if unknown).
    pub async fn exec_jobs(
        &self,
        hosts: &[String],
        cmd: &str,
        events: &Option<EventSink>,
    ) -> crate::error::Result<Vec<(String, String)>> {
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
            self.probe(&unknown, events).await;
        }
        hosts
            .iter()
            .map(|h| {
                render::docker_exec_command(self.prefix(h), &self.name, cmd, false)
                    .map(|c| (h.clone(), c))
            })
            .collect()
    }
}

fn fill(r: &mut HostReport, o: Option<&Observation>) {
    let Some(o) = o else { return };
    r.local_image = o.local_image.clone();
    r.sshd_up = o.sshd_up;
    if let Some(c) = &o.container {
        r.container_id = c.id.clone();
        r.started_at = c.started_at.clone();
        r.container_image = c.image_id.clone();
        r.config_hash = c.config_hash.clone();
        r.running = c.running;
    }
}

fn mark(reports: &mut [HostReport], r: &HostResult, what: &str) {
    if let Some(rep) = reports.iter_mut().find(|x| x.host == r.host) {
        rep.ok = false;
        rep.detail = failure(r, what);
        rep.output = output_of(r);
    }
}

fn mark_result(reports: &mut [HostReport], r: &HostResult, action: &str, done: &str) {
    if let Some(rep) = reports.iter_mut().find(|x| x.host == r.host) {
        rep.action = action.into();
        if r.status == Status::Ok {
            rep.detail = done.into();
        } else {
            rep.ok = false;
            rep.detail = failure(r, action);
            rep.output = output_of(r);
        }
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
