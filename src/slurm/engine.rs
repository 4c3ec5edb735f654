//! The Slurm fan-out engine: one `srun` step per distinct command of a call, one task per node,
//! each task's output framed by the task wrapper and decoded per host here.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::frame::{Frame, Item, Reassembler, is_exit_notice, split_label};
use super::nodes::{Node, map_hosts, parse_show_node};
use crate::error::{Error, Result};
use crate::render::slurm::{Placement, StepSpec, kill_command, salloc_argv, srun_argv};
use crate::ssh::cluster::{EventSink, HoldFailure, Phase, emit, printed_line, text_before};
use crate::ssh::job::{Input, JobSpec, KILL_GRACE, Killed, OutputTo, new_token};
use crate::ssh::result::{HostResult, Status};

/// How the engine reaches Slurm.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    pub placement: Placement,
    /// How long a task may take to start on its node, and how long a started task may stay
    /// silent (the wrapper's heartbeat is 1 s) before its host is `unreachable`.
    pub connect_timeout: Duration,
    /// The tasks' working directory on the nodes.
    pub chdir: String,
    pub srun: String,
    pub salloc: String,
    pub scontrol: String,
    pub scancel: String,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            placement: Placement::default(),
            connect_timeout: Duration::from_secs(10),
            chdir: "/".into(),
            srun: "srun".into(),
            salloc: "salloc".into(),
            scontrol: "scontrol".into(),
            scancel: "scancel".into(),
        }
    }
}

pub struct SlurmCluster {
    hosts: Vec<String>,
    opts: SlurmOptions,
    closed: AtomicBool,
    /// Flipped by `close`: every running call cancels its steps.
    close_tx: watch::Sender<bool>,
    /// The allocation cvs-core made (no `job_id` given), on first use.
    alloc: tokio::sync::Mutex<Option<Allocation>>,
    /// Calls running now: `close` lets them stop their tasks before it gives the allocation
    /// back (releasing it first would end the steps before their kills could report).
    inflight: watch::Sender<usize>,
}

/// Counts a call as running while it lives.
struct Running<'a>(&'a watch::Sender<usize>);

impl<'a> Running<'a> {
    fn new(tx: &'a watch::Sender<usize>) -> Self {
        tx.send_modify(|n| *n += 1);
        Running(tx)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// An allocation held by `salloc ... -- cat` (see `render::slurm::salloc_argv`): it lasts
/// while `stdin` is open.
struct Allocation {
    job: String,
    nodes: Vec<String>,
    /// Why each host of the cluster left out of the allocation was left out.
    left_out: HashMap<String, String>,
    stdin: Option<tokio::process::ChildStdin>,
    child: Child,
}

impl Allocation {
    /// Close `cat`'s stdin: salloc relinquishes the allocation and exits on its own.
    async fn release(mut self, scancel: &str) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = Command::new(scancel)
                .arg(&self.job)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        // Not killed: salloc, seeing `cat` end on EOF, gives the allocation back itself.
        if let Ok(mut a) = self.alloc.try_lock()
            && let Some(mut a) = a.take()
        {
            drop(a.stdin.take());
        }
    }
}

/// One host of a step.
struct Member {
    host: String,
    node: String,
    out: Option<std::fs::File>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Bytes of stdout / stderr received (the next frame's expected offset).
    out_len: u64,
    err_len: u64,
    started: bool,
    last_seen: Instant,
    last_output: Instant,
    step: Option<String>,
    exit: Option<i32>,
    /// Set once the host's outcome is decided other than by its exit code.
    failed: Option<(Status, String)>,
    /// A kill was asked of the host's wrapper: the host waits for its report until then.
    kill_due: Option<Instant>,
    killed: Option<Killed>,
    /// The step's inactivity timeout (the wrapper enforces it), for the message.
    inactivity: Option<Duration>,
    notes: Vec<String>,
    io_error: Option<String>,
}

/// How long a wrapper may take to report its kill (the script's grace plus its scans).
const KILL_REPORT_WAIT: Duration = Duration::from_secs(10);

impl Member {
    fn new(host: String, node: String, out: Option<std::fs::File>) -> Self {
        let now = Instant::now();
        Member {
            host,
            node,
            out,
            stdout: Vec::new(),
            stderr: Vec::new(),
            out_len: 0,
            err_len: 0,
            started: false,
            last_seen: now,
            last_output: now,
            step: None,
            exit: None,
            failed: None,
            kill_due: None,
            killed: None,
            inactivity: None,
            notes: Vec::new(),
            io_error: None,
        }
    }

    /// Whether a data frame continues its stream exactly; a gap or an overlap means srun lost
    /// part of the output, which is reported, never papered over.
    fn accept(&mut self, stdout: bool, offset: u64, len: usize) -> bool {
        let have = if stdout { self.out_len } else { self.err_len };
        if offset != have {
            let what = if stdout { "stdout" } else { "stderr" };
            self.damaged(format!(
                "{what} frame at byte {offset}, expected byte {have}"
            ));
            return false;
        }
        let n = have + len as u64;
        if stdout {
            self.out_len = n;
        } else {
            self.err_len = n;
        }
        true
    }

    fn damaged(&mut self, what: String) {
        if self.io_error.is_none() {
            self.io_error = Some(format!(
                "output from slurm node {} was damaged in transit: {what}",
                self.node
            ));
        }
    }

    fn resolved(&self) -> bool {
        (self.exit.is_some() || self.failed.is_some()) && self.kill_due.is_none()
    }

    /// Decide the host as `status` unless it already is; a started task is asked to kill its
    /// command (the caller signals the step).
    fn stop(&mut self, status: Status, why: String) -> bool {
        if self.failed.is_some() || self.exit.is_some() {
            return false;
        }
        if self.started {
            self.failed = Some((status, why));
            self.kill_due = Some(Instant::now() + KILL_GRACE + KILL_REPORT_WAIT);
            true
        } else {
            self.failed = Some((
                status,
                format!("{why} before the task started on slurm node {}", self.node),
            ));
            false
        }
    }
}

fn parse_killed(report: &str) -> Killed {
    match crate::render::remote::parse_kill_report(report) {
        None => Killed::NotConfirmed("the kill script did not finish".into()),
        Some((0, _)) => Killed::NothingFound,
        Some((_, 0)) => Killed::Confirmed,
        Some((n, left)) => Killed::NotConfirmed(format!("{left} of {n} remote processes survived")),
    }
}

/// A command kept running by [`SlurmCluster::hold`]. Dropping it closes the step's stdin
/// (srun broadcasts the EOF, which ends the held command) and lets srun finish on its own,
/// killing it after a grace if it does not.
pub struct Holder {
    stdin: Option<tokio::process::ChildStdin>,
    child: Option<Child>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let Some(mut child) = self.child.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if tokio::time::timeout(Duration::from_secs(5), child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                });
            }
            Err(_) => {
                let _ = child.start_kill();
            }
        }
    }
}

/// A host of a step: (host, Slurm node, the file its stdout goes to if not memory).
type Target = (String, String, Option<std::fs::File>);

enum Line {
    Out(String),
    Err(String),
}

impl SlurmCluster {
    pub fn new(hosts: Vec<String>, opts: SlurmOptions) -> Result<Self> {
        if hosts.is_empty() {
            return Err(Error::InvalidArgument(
                "a cluster needs at least one host".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for h in &hosts {
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::InvalidArgument(format!("invalid host {h:?}")));
            }
            if !seen.insert(h) {
                return Err(Error::InvalidArgument(format!(
                    "host {h:?} is listed twice"
                )));
            }
        }
        let p = &opts.placement;
        for (what, v) in [
            ("job_id", &p.job_id),
            ("partition", &p.partition),
            ("account", &p.account),
            ("reservation", &p.reservation),
            ("time", &p.time),
        ] {
            if let Some(v) = v {
                crate::render::slurm::check_slurm_word(what, v)?;
            }
        }
        Ok(SlurmCluster {
            hosts,
            opts,
            closed: AtomicBool::new(false),
            close_tx: watch::channel(false).0,
            alloc: tokio::sync::Mutex::new(None),
            inflight: watch::channel(0).0,
        })
    }

    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    pub fn options(&self) -> &SlurmOptions {
        &self.opts
    }

    /// Slurm's nodes now (names, addresses, states): asked once per call, so a node that went
    /// down since the last call is seen.
    async fn nodes(&self) -> std::result::Result<Vec<Node>, String> {
        let out = Command::new(&self.opts.scontrol)
            .args(["-o", "show", "node"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let limit = self.opts.connect_timeout.max(Duration::from_secs(5));
        match tokio::time::timeout(limit, out).await {
            Err(_) => Err(format!(
                "scontrol did not answer within {}s",
                limit.as_secs()
            )),
            Ok(Err(e)) => Err(format!("cannot run {}: {e}", self.opts.scontrol)),
            Ok(Ok(o)) if !o.status.success() => Err(format!(
                "scontrol show node failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(Ok(o)) => Ok(parse_show_node(&String::from_utf8_lossy(&o.stdout))),
        }
    }

    /// Each host's node name, or why a step cannot reach it now.
    fn usable(
        hosts: &[String],
        nodes: &[Node],
        in_allocation: bool,
    ) -> Vec<std::result::Result<String, String>> {
        map_hosts(hosts, nodes)
            .into_iter()
            .map(|m| {
                let n = &nodes[m?];
                match n.unusable(in_allocation) {
                    Some(why) => Err(why),
                    None => Ok(n.name.clone()),
                }
            })
            .collect()
    }

    /// The job steps run in, and each host's node (or why it cannot be reached): the caller's
    /// allocation, or the one cvs-core makes on first use from every usable node of the
    /// cluster's hosts.
    async fn place(&self, hosts: &[String]) -> (String, Vec<std::result::Result<String, String>>) {
        let nodes = match self.nodes().await {
            Ok(n) => n,
            Err(why) => {
                return (
                    String::new(),
                    hosts.iter().map(|_| Err(why.clone())).collect(),
                );
            }
        };
        if let Some(job) = &self.opts.placement.job_id {
            return (job.clone(), Self::usable(hosts, &nodes, true));
        }
        let mut alloc = self.alloc.lock().await;
        // salloc exits when its allocation ends under it (scancel, a time limit, a slurmctld
        // that revoked it): make a new one rather than send steps to a job that is gone.
        if let Some(a) = alloc.as_mut()
            && !matches!(a.child.try_wait(), Ok(None))
        {
            *alloc = None;
        }
        if alloc.is_none() {
            let mut wanted = Vec::new();
            let mut left_out = HashMap::new();
            for (h, r) in self
                .hosts
                .iter()
                .zip(Self::usable(&self.hosts, &nodes, false))
            {
                match r {
                    Ok(n) => wanted.push(n),
                    Err(why) => {
                        left_out.insert(h.clone(), why);
                    }
                }
            }
            match self.allocate(&wanted).await {
                Ok(mut a) => {
                    a.left_out = left_out;
                    *alloc = Some(a);
                }
                Err(why) => {
                    // Unusable hosts keep their own reason; the others get salloc's.
                    let placed = Self::usable(hosts, &nodes, false)
                        .into_iter()
                        .map(|r| r.and_then(|_| Err(why.clone())))
                        .collect();
                    return (String::new(), placed);
                }
            }
        }
        let a = alloc.as_ref().expect("allocated above");
        let placed = Self::usable(hosts, &nodes, true)
            .into_iter()
            .zip(hosts)
            .map(|(r, h)| {
                r.and_then(|n| {
                    if a.nodes.contains(&n) {
                        return Ok(n);
                    }
                    Err(match a.left_out.get(h) {
                        Some(why) => format!("{why} (left out of allocation {})", a.job),
                        None => format!("slurm node {n} is not in allocation {}", a.job),
                    })
                })
            })
            .collect();
        (a.job.clone(), placed)
    }

    async fn allocate(&self, nodes: &[String]) -> std::result::Result<Allocation, String> {
        if nodes.is_empty() {
            return Err("no slurm node of this cluster is usable".into());
        }
        let name = format!("cvs-core-{}", std::process::id());
        let argv = salloc_argv(
            &self.opts.salloc,
            &self.opts.placement,
            nodes,
            self.opts.connect_timeout.as_secs().max(1),
            &name,
        )
        .map_err(|e| e.to_string())?;
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Never killed on drop: closing its stdin is how the allocation is given back.
            .kill_on_drop(false)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.opts.salloc))?;
        let stdin = child.stdin.take();
        let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
        let mut said = Vec::new();
        let limit = self.opts.connect_timeout + Duration::from_secs(5);
        let granted = tokio::time::timeout(limit, async {
            while let Ok(Some(l)) = err.next_line().await {
                if let Some(rest) = l.split("Granted job allocation ").nth(1) {
                    return Some(rest.trim().to_owned());
                }
                said.push(l);
            }
            None
        })
        .await;
        match granted {
            Ok(Some(job)) => {
                // salloc says more on release; nobody must block it by not reading.
                tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
                Ok(Allocation {
                    job,
                    nodes: nodes.to_vec(),
                    left_out: HashMap::new(),
                    stdin,
                    child,
                })
            }
            other => {
                drop(stdin);
                let _ = child.start_kill();
                let _ = child.wait().await;
                let why = if said.is_empty() {
                    match other {
                        Err(_) => format!("salloc got no allocation within {}s", limit.as_secs()),
                        _ => "salloc ended without an allocation".to_owned(),
                    }
                } else {
                    said.join("; ")
                };
                Err(why)
            }
        }
    }

    /// Check that every node answers to Slurm (no command runs); the failures, by host.
    /// Outside an allocation this is also where cvs-core makes its own.
    pub async fn connect(&self, hosts: &[String]) -> Vec<HostResult> {
        self.place(hosts)
            .await
            .1
            .into_iter()
            .zip(hosts)
            .filter_map(|(r, h)| {
                r.err()
                    .map(|why| HostResult::failed(h, Status::Unreachable, why, Duration::ZERO))
            })
            .collect()
    }

    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.close_tx.send(true);
        let mut running = self.inflight.subscribe();
        let _ = tokio::time::timeout(
            KILL_GRACE + KILL_REPORT_WAIT + Duration::from_secs(5),
            running.wait_for(|n| *n == 0),
        )
        .await;
        if let Some(a) = self.alloc.lock().await.take() {
            a.release(&self.opts.scancel).await;
        }
    }

    /// Run one job per host: jobs with the same command, input and limits share one step.
    /// Results in `jobs` order.
    pub async fn run_many(
        self: &Arc<Self>,
        jobs: Vec<(String, JobSpec)>,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> Vec<HostResult> {
        let _running = Running::new(&self.inflight);
        let retry: Vec<(String, JobSpec)> = if self.opts.placement.job_id.is_none() {
            jobs.clone()
        } else {
            Vec::new()
        };
        let (job, mut results) = self.run_once(jobs, events.clone(), cancel.clone()).await;
        // cvs-core's own allocation ended under it (scancel, a time limit) before salloc said
        // so: srun refuses every step of it, no task started, so nothing ran. Make a new
        // allocation and run the call once more.
        if !retry.is_empty() && results.iter().any(|r| allocation_gone(r, &job)) {
            let mut alloc = self.alloc.lock().await;
            if alloc.as_ref().is_some_and(|a| a.job == job) {
                *alloc = None;
            }
            drop(alloc);
            let again: Vec<(String, JobSpec)> = retry
                .into_iter()
                .filter(|(h, _)| {
                    results
                        .iter()
                        .any(|r| &r.host == h && allocation_gone(r, &job))
                })
                .collect();
            let (_, redone) = self.run_once(again, events, cancel).await;
            for r in redone {
                if let Some(slot) = results.iter_mut().find(|x| x.host == r.host) {
                    *slot = r;
                }
            }
        }
        results
    }

    /// One attempt of [`Self::run_many`]; also says which job the steps ran in.
    async fn run_once(
        self: &Arc<Self>,
        jobs: Vec<(String, JobSpec)>,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> (String, Vec<HostResult>) {
        let order: Vec<String> = jobs.iter().map(|(h, _)| h.clone()).collect();
        let mut results: HashMap<String, HostResult> = HashMap::new();
        let mut job = String::new();
        if self.closed.load(Ordering::Relaxed) {
            for h in &order {
                let r =
                    HostResult::failed(h, Status::Error, "the cluster is closed", Duration::ZERO);
                results.insert(h.clone(), r);
            }
        } else {
            let (placed_job, resolved) = self.place(&order).await;
            job = placed_job;
            let mut groups: Vec<(JobSpec, Vec<Target>)> = Vec::new();
            for ((host, spec), node) in jobs.into_iter().zip(resolved) {
                let node = match node {
                    Ok(n) => n,
                    Err(why) => {
                        let r = HostResult::failed(&host, Status::Unreachable, why, Duration::ZERO);
                        emit_done(&events, &r);
                        results.insert(host, r);
                        continue;
                    }
                };
                let out = match &spec.stdout_to {
                    OutputTo::Memory => None,
                    OutputTo::File(path) => match std::fs::File::create(path) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            let why = format!("cannot create {}: {e}", path.display());
                            let r = HostResult::failed(&host, Status::Error, why, Duration::ZERO);
                            emit_done(&events, &r);
                            results.insert(host, r);
                            continue;
                        }
                    },
                };
                match groups.iter_mut().find(|(s, _)| same_step(s, &spec)) {
                    Some((_, members)) => members.push((host, node, out)),
                    None => groups.push((spec, vec![(host, node, out)])),
                }
            }
            let mut steps = tokio::task::JoinSet::new();
            for (spec, members) in groups {
                let this = self.clone();
                let (events, cancel, job) = (events.clone(), cancel.clone(), job.clone());
                steps.spawn(async move { this.run_step(job, spec, members, events, cancel).await });
            }
            while let Some(done) = steps.join_next().await {
                match done {
                    Ok(rs) => {
                        for r in rs {
                            results.insert(r.host.clone(), r);
                        }
                    }
                    Err(e) => {
                        for h in &order {
                            results.entry(h.clone()).or_insert_with(|| {
                                HostResult::failed(
                                    h,
                                    Status::Error,
                                    format!("internal error: {e}"),
                                    Duration::ZERO,
                                )
                            });
                        }
                    }
                }
            }
        }
        let results = order
            .iter()
            .map(|h| {
                results.remove(h).unwrap_or_else(|| {
                    HostResult::failed(h, Status::Error, "no result", Duration::ZERO)
                })
            })
            .collect();
        (job, results)
    }

    fn spawn_srun(&self, argv: &[String], stdin: bool) -> std::io::Result<Child> {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: the terminal's Ctrl-C reaches us, and we stop the step
            // (srun would otherwise cancel it on its own and race our kill).
            .process_group(0);
        cmd.spawn()
    }

    async fn run_step(
        self: Arc<Self>,
        job: String,
        spec: JobSpec,
        hosts: Vec<Target>,
        events: Option<EventSink>,
        mut cancel: watch::Receiver<bool>,
    ) -> Vec<HostResult> {
        let started = Instant::now();
        let token = new_token();
        let mut members: Vec<Member> = Vec::with_capacity(hosts.len());
        for (host, node, file) in hosts {
            let mut m = Member::new(host, node, file);
            m.inactivity = spec.inactivity_timeout;
            members.push(m);
        }
        let nodes: Vec<String> = members.iter().map(|m| m.node.clone()).collect();
        let fail_all = |members: Vec<Member>, status: Status, why: String| -> Vec<HostResult> {
            members
                .into_iter()
                .map(|m| {
                    let r = HostResult::failed(&m.host, status, why.clone(), started.elapsed());
                    emit_done(&events, &r);
                    r
                })
                .collect()
        };
        let argv = match self.step_argv(
            &job,
            &nodes,
            &token,
            &spec.cmd,
            &spec.kill_prefix,
            spec.inactivity_timeout,
        ) {
            Ok(a) => a,
            Err(e) => return fail_all(members, Status::Error, e.to_string()),
        };
        for m in &members {
            emit(
                &events,
                &m.host,
                Phase::Connecting,
                None,
                Duration::ZERO,
                String::new(),
            );
        }
        let mut child = match self.spawn_srun(&argv, !matches!(spec.input, Input::None)) {
            Ok(c) => c,
            Err(e) => {
                return fail_all(
                    members,
                    Status::Error,
                    format!("cannot run {}: {e}", self.opts.srun),
                );
            }
        };

        // stdin: broadcast to every task by srun (--input=all).
        let feeder = child.stdin.take().map(|mut stdin| {
            let input = spec.input.clone();
            tokio::spawn(async move {
                let r: std::io::Result<()> = async {
                    match input {
                        Input::None => {}
                        Input::Bytes(b) => stdin.write_all(&b).await?,
                        Input::File(path) => {
                            let mut f = tokio::fs::File::open(&path).await?;
                            tokio::io::copy(&mut f, &mut stdin).await?;
                        }
                    }
                    stdin.shutdown().await
                }
                .await;
                match r {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Some(e.to_string()),
                    _ => None,
                }
            })
        });

        let (tx, mut rx) = mpsc::unbounded_channel::<Line>();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(Line::Out(l)).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if tx.send(Line::Err(l)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);

        let mut trace = std::env::var_os("CVS_CORE_SLURM_TRACE")
            .and_then(|d| std::fs::File::create(std::path::Path::new(&d).join(&token)).ok());
        let mut task_of: HashMap<usize, usize> = HashMap::new();
        let mut asm = Reassembler::default();
        let mut unlabelled: Vec<String> = Vec::new();
        let mut srun_done = false;
        let mut stopped = false;
        let mut we_cancelled = false;
        let mut close_rx = self.close_tx.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence = self.opts.connect_timeout.max(Duration::from_secs(3));
        let mut cancel_open = true;
        let mut close_open = true;
        let mut lines_open = true;

        loop {
            if members.iter().all(Member::resolved) || (srun_done && !lines_open) {
                break;
            }
            tokio::select! {
                line = rx.recv(), if lines_open => match line {
                    None => lines_open = false,
                    Some(Line::Out(l)) => {
                        if let Some(t) = trace.as_mut() {
                            let _ = writeln!(t, "{l}");
                        }
                        self.on_line(&l, &mut asm, &mut members, &mut task_of, &events)
                    }
                    Some(Line::Err(l)) => on_err_line(&l, &mut members, &task_of, &mut unlabelled),
                },
                status = child.wait(), if !srun_done => {
                    srun_done = true;
                    if let Ok(s) = status && !s.success() && s.code().is_none() {
                        unlabelled.push(format!("srun ended by a signal ({s})"));
                    }
                }
                changed = cancel.changed(), if cancel_open => cancel_open = changed.is_ok(),
                changed = close_rx.changed(), if close_open => close_open = changed.is_ok(),
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if !stopped {
                let stop = if *cancel.borrow() {
                    Some((Status::Cancelled, "cancelled".to_owned()))
                } else if *close_rx.borrow() {
                    Some((
                        Status::Cancelled,
                        "cancelled: the cluster was closed".to_owned(),
                    ))
                } else {
                    spec.timeout.filter(|t| started.elapsed() >= *t).map(|t| {
                        (
                            Status::Timeout,
                            format!("timed out after {:.1}s", t.as_secs_f64()),
                        )
                    })
                };
                if let Some((status, why)) = stop {
                    stopped = true;
                    let mut signal = false;
                    for m in members.iter_mut() {
                        signal |= m.stop(status, why.clone());
                    }
                    if signal {
                        self.signal_step(&members).await;
                    }
                }
            }
            for m in members.iter_mut() {
                if m.resolved() {
                    continue;
                }
                if let Some(due) = m.kill_due {
                    if now >= due {
                        m.kill_due = None;
                        m.killed = Some(Killed::NotConfirmed(format!(
                            "slurm node {} did not report the kill",
                            m.node
                        )));
                    }
                } else if !m.started {
                    if now.duration_since(started) >= self.opts.connect_timeout {
                        m.failed = Some((
                            Status::Unreachable,
                            format!(
                                "the task did not start on slurm node {} within {}s",
                                m.node,
                                self.opts.connect_timeout.as_secs()
                            ),
                        ));
                    }
                } else if now.duration_since(m.last_seen) >= silence {
                    m.failed = Some((
                        Status::Unreachable,
                        format!(
                            "lost contact with slurm node {} (no heartbeat for {}s)",
                            m.node,
                            silence.as_secs()
                        ),
                    ));
                }
            }
        }

        // Every host is decided: the step ends by itself unless a task is stuck on a lost node
        // (or never started), which only a cancel ends.
        if !srun_done {
            let lost = members
                .iter()
                .any(|m| matches!(m.failed, Some((Status::Unreachable, _))));
            let ended = if lost {
                Err(())
            } else {
                tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .map(|_| ())
                    .map_err(|_| ())
            };
            if ended.is_err() {
                we_cancelled = true;
                self.cancel_step(&members).await;
                if tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
        // Lines still in flight after srun ended.
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            match line {
                Line::Out(l) => self.on_line(&l, &mut asm, &mut members, &mut task_of, &events),
                Line::Err(l) => on_err_line(&l, &mut members, &task_of, &mut unlabelled),
            }
        }
        let stdin_error = match feeder {
            Some(f) => f.await.ok().flatten(),
            None => None,
        };

        let elapsed = started.elapsed();
        members
            .into_iter()
            .map(|mut m| {
                let mut notes = std::mem::take(&mut m.notes);
                if we_cancelled {
                    // slurmstepd's "*** STEP J.S ON node CANCELLED AT ... ***": our own doing.
                    notes.retain(|n| !n.contains(" CANCELLED AT "));
                }
                if !m.resolved() {
                    notes.extend(unlabelled.iter().filter(|l| mentions(l, &m.node)).cloned());
                    if notes.is_empty() {
                        notes.extend(unlabelled.iter().cloned());
                    }
                }
                if m.kill_due.take().is_some() {
                    m.killed = Some(Killed::NotConfirmed(format!(
                        "slurm node {} did not report the kill",
                        m.node
                    )));
                }
                let failed = m.failed.take().map(|(status, why)| match &m.killed {
                    Some(k) => (status, format!("{why}; {}", k.describe())),
                    None => (status, why),
                });
                let (status, exit_code, error) = match (failed, m.exit) {
                    (Some((status, why)), _) => (status, -1, Some(with_notes(why, &notes))),
                    (None, Some(code)) => (
                        if code == 0 {
                            Status::Ok
                        } else {
                            Status::ExitNonzero
                        },
                        code,
                        m.io_error
                            .take()
                            .or_else(|| stdin_error.clone().map(|e| format!("stdin: {e}"))),
                    ),
                    (None, None) if m.started => (
                        Status::Error,
                        -1,
                        Some(with_notes(
                            format!(
                                "the task on slurm node {} ended without an exit status",
                                m.node
                            ),
                            &notes,
                        )),
                    ),
                    (None, None) => (
                        Status::Unreachable,
                        -1,
                        Some(with_notes(
                            format!("the task did not start on slurm node {}", m.node),
                            &notes,
                        )),
                    ),
                };
                let r = HostResult {
                    host: m.host.clone(),
                    status,
                    exit_code,
                    signal: None,
                    stdout: std::mem::take(&mut m.stdout),
                    stderr: std::mem::take(&mut m.stderr),
                    duration: elapsed,
                    error,
                };
                let mut r = r;
                if r.status == Status::Ok && r.error.is_some() {
                    r.status = Status::Error;
                }
                if let Some(f) = m.out.as_mut()
                    && let Err(e) = f.flush()
                    && r.error.is_none()
                {
                    r.status = Status::Error;
                    r.error = Some(format!("writing the output file: {e}"));
                }
                emit_done(&events, &r);
                r
            })
            .collect()
    }

    /// Start `cmd` on `host`'s node as a step of its own and keep it running until the holder
    /// is dropped (see `ssh::Cluster::hold`): the lifecycle's per-host lock. Stages are lines of
    /// the command's decoded stdout.
    pub async fn hold(
        self: &Arc<Self>,
        host: &str,
        cmd: &str,
        stages: &[(&str, Duration)],
        kill_prefix: &str,
        mut cancel: watch::Receiver<bool>,
    ) -> std::result::Result<(Holder, String), HoldFailure> {
        let started = Instant::now();
        let fail = |stage: usize, status: Status, why: String| HoldFailure {
            result: HostResult::failed(host, status, why, started.elapsed()),
            stage,
        };
        if self.closed.load(Ordering::Relaxed) {
            return Err(fail(0, Status::Error, "the cluster is closed".into()));
        }
        let (job, mut placed) = self.place(&[host.to_owned()]).await;
        let node = match placed.pop() {
            Some(Ok(n)) => n,
            Some(Err(why)) => return Err(fail(0, Status::Unreachable, why)),
            None => return Err(fail(0, Status::Error, "no node".into())),
        };
        let token = new_token();
        let nodes = [node.clone()];
        let argv = self
            .step_argv(&job, &nodes, &token, cmd, kill_prefix, None)
            .map_err(|e| fail(0, Status::Error, e.to_string()))?;
        let mut child = self.spawn_srun(&argv, true).map_err(|e| {
            fail(
                0,
                Status::Error,
                format!("cannot run {}: {e}", self.opts.srun),
            )
        })?;
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().map(|o| BufReader::new(o).lines());
        let mut err_lines: Vec<String> = Vec::new();
        let err_task = child.stderr.take().map(|e| {
            tokio::spawn(async move {
                let mut lines = BufReader::new(e).lines();
                let mut kept = Vec::new();
                while let Ok(Some(l)) = lines.next_line().await {
                    if kept.len() < 20 && !is_exit_notice(&l) {
                        kept.push(l);
                    }
                }
                kept
            })
        });
        let mut seen: Vec<u8> = Vec::new();
        let mut asm = Reassembler::default();
        let mut step: Option<String> = None;
        let mut failure = None;
        'stages: for (stage, (marker, limit)) in stages.iter().enumerate() {
            let deadline = tokio::time::Instant::now() + *limit;
            loop {
                if printed_line(&seen, marker) {
                    break;
                }
                let Some(reader) = out.as_mut() else {
                    failure = Some((stage, Status::Error, "no output channel".to_owned()));
                    break 'stages;
                };
                tokio::select! {
                    line = reader.next_line() => match line {
                        Ok(Some(l)) => {
                            let Some((_, items)) = asm.push(&l) else { continue };
                            for item in items {
                                match item {
                                    Item::Frame(Frame::Hello { step: s, .. }) => step = Some(s),
                                    Item::Frame(Frame::Stdout { offset, bytes }) => {
                                        if offset != seen.len() as u64 {
                                            failure = Some((stage, Status::Error, format!("output from slurm node {node} was damaged in transit")));
                                            break 'stages;
                                        }
                                        seen.extend_from_slice(&bytes);
                                    }
                                    Item::Frame(Frame::Exit(code)) => {
                                        failure = Some((stage, Status::Error, format!("ended before ready (exit {code})")));
                                        break 'stages;
                                    }
                                    Item::Frame(Frame::Failed(why)) => {
                                        failure = Some((stage, Status::Error, why));
                                        break 'stages;
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {
                            let status = if step.is_none() { Status::Unreachable } else { Status::Error };
                            failure = Some((stage, status, "ended before ready".to_owned()));
                            break 'stages;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        let (status, why) = if step.is_none() {
                            (Status::Unreachable, format!("the task did not start on slurm node {node} within {}s", limit.as_secs()))
                        } else {
                            (Status::Timeout, format!("no '{marker}' within {}s", limit.as_secs()))
                        };
                        failure = Some((stage, status, why));
                        break 'stages;
                    }
                    _ = cancel.wait_for(|c| *c) => {
                        failure = Some((stage, Status::Cancelled, "cancelled".to_owned()));
                        break 'stages;
                    }
                }
            }
        }
        if let Some((stage, status, why)) = failure {
            let mut m = Member::new(host.to_owned(), node.clone(), None);
            m.step = step.clone();
            let killed = match (&step, out.as_mut()) {
                (Some(_), Some(reader)) => {
                    self.signal_step(std::slice::from_ref(&m)).await;
                    let wait = async {
                        while let Ok(Some(l)) = reader.next_line().await {
                            for item in asm.push(&l).map(|(_, i)| i).unwrap_or_default() {
                                if let Item::Frame(Frame::KillReport(r)) = item {
                                    return parse_killed(&r);
                                }
                            }
                        }
                        Killed::NotConfirmed("the task ended without a kill report".into())
                    };
                    tokio::time::timeout(KILL_GRACE + KILL_REPORT_WAIT, wait)
                        .await
                        .unwrap_or_else(|_| {
                            Killed::NotConfirmed(format!(
                                "slurm node {node} did not report the kill"
                            ))
                        })
                }
                _ => Killed::NothingFound,
            };
            drop(stdin);
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                self.cancel_step(std::slice::from_ref(&m)).await;
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            if let Some(t) = err_task {
                err_lines = tokio::time::timeout(Duration::from_millis(500), t)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or_default();
            }
            let why = with_notes(why, &err_lines);
            return Err(fail(stage, status, format!("{why}; {}", killed.describe())));
        }
        // Keep draining: the wrapper's heartbeats would otherwise fill the pipe and stall srun.
        if let Some(mut reader) = out {
            tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
        }
        let text = text_before(&seen, stages.last().map_or("", |(m, _)| *m));
        Ok((
            Holder {
                stdin,
                child: Some(child),
            },
            text,
        ))
    }

    fn on_line(
        &self,
        line: &str,
        asm: &mut Reassembler,
        members: &mut [Member],
        task_of: &mut HashMap<usize, usize>,
        events: &Option<EventSink>,
    ) {
        let Some((task, items)) = asm.push(line) else {
            return;
        };
        for item in items {
            match item {
                Item::Frame(frame) => self.on_frame(task, frame, members, task_of, events),
                Item::Stray(text) => {
                    if let Some(&i) = task_of.get(&task) {
                        members[i].notes.push(text);
                    }
                }
            }
        }
    }

    fn on_frame(
        &self,
        task: usize,
        frame: Frame,
        members: &mut [Member],
        task_of: &mut HashMap<usize, usize>,
        events: &Option<EventSink>,
    ) {
        if let Frame::Hello { node, step } = &frame {
            if let Some(i) = members.iter().position(|m| &m.node == node) {
                task_of.insert(task, i);
                let m = &mut members[i];
                m.started = true;
                m.last_seen = Instant::now();
                m.last_output = m.last_seen;
                m.step = Some(step.clone());
                for phase in [Phase::Connected, Phase::Running] {
                    emit(events, &m.host, phase, None, Duration::ZERO, String::new());
                }
            }
            return;
        }
        let Some(&i) = task_of.get(&task) else {
            return;
        };
        let m = &mut members[i];
        m.last_seen = Instant::now();
        match frame {
            Frame::Stdout { offset, bytes } => {
                m.last_output = m.last_seen;
                if !m.accept(true, offset, bytes.len()) {
                    return;
                }
                match m.out.as_mut() {
                    Some(f) => {
                        if let Err(e) = f.write_all(&bytes)
                            && m.io_error.is_none()
                        {
                            m.io_error = Some(format!("writing the output file: {e}"));
                        }
                    }
                    None => m.stdout.extend_from_slice(&bytes),
                }
            }
            Frame::Stderr { offset, bytes } => {
                m.last_output = m.last_seen;
                if m.accept(false, offset, bytes.len()) {
                    m.stderr.extend_from_slice(&bytes);
                }
            }
            Frame::Exit(code) => m.exit = Some(code),
            Frame::Failed(why) => {
                m.failed.get_or_insert((Status::Error, why));
            }
            Frame::Inactive => {
                if let Some(limit) = m.inactivity {
                    m.stop(
                        Status::InactivityTimeout,
                        format!("no output for {:.1}s", limit.as_secs_f64()),
                    );
                }
            }
            Frame::KillReport(report) => {
                m.kill_due = None;
                m.killed = Some(parse_killed(&report));
            }
            Frame::Damaged(text) => m.damaged(format!("a damaged frame {text:?}")),
            Frame::Heartbeat | Frame::Hello { .. } => {}
        }
    }

    /// The argv of a step running `cmd` on `nodes` under the task wrapper.
    fn step_argv(
        &self,
        job: &str,
        nodes: &[String],
        token: &str,
        cmd: &str,
        kill_prefix: &str,
        inactivity: Option<Duration>,
    ) -> Result<Vec<String>> {
        let kill = kill_command(token, KILL_GRACE.as_millis() as u64, kill_prefix)?;
        srun_argv(
            &self.opts.srun,
            &StepSpec {
                job,
                nodes,
                token,
                command: cmd,
                kill_command: &kill,
                inactivity_ms: inactivity.map_or(0, |d| (d.as_millis() as u64).max(1)),
                chdir: &self.opts.chdir,
            },
        )
    }

    /// Ask every started task of the step to kill its command (SIGURG to the step: the
    /// wrapper runs the kill script and reports `K`). Tasks not started yet are ended by the
    /// step's cancel once the call is decided.
    async fn signal_step(&self, members: &[Member]) {
        let mut steps: Vec<String> = members.iter().filter_map(|m| m.step.clone()).collect();
        steps.sort();
        steps.dedup();
        if steps.is_empty() {
            return;
        }
        let mut argv: Vec<String> = vec![self.opts.scancel.clone(), "--signal=URG".into()];
        argv.extend(steps);
        self.scancel(argv).await;
    }

    async fn scancel(&self, argv: Vec<String>) {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), cmd.status()).await;
    }

    /// Cancel the step when it outlives its hosts' results (a task stuck on a lost node, or
    /// one that never started). Without a started task its ID is unknown: srun is killed.
    async fn cancel_step(&self, members: &[Member]) {
        if let Some(step) = members.iter().find_map(|m| m.step.clone()) {
            self.scancel(vec![self.opts.scancel.clone(), step]).await;
        }
    }
}

/// srun refused a step because the job `job` no longer exists (no task ran).
fn allocation_gone(r: &HostResult, job: &str) -> bool {
    !job.is_empty()
        && r.status == Status::Unreachable
        && r.error.as_deref().is_some_and(|e| {
            e.contains("the task did not start")
                && [
                    format!("Slurm job {job} has expired"),
                    "Invalid job id specified".to_owned(),
                    format!("Unable to confirm allocation for job {job}"),
                    format!("Expired or invalid job {job}"),
                ]
                .iter()
                .any(|m| e.contains(m.as_str()))
        })
}

fn mentions(line: &str, node: &str) -> bool {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .any(|w| w == node)
}

fn with_notes(why: String, notes: &[String]) -> String {
    if notes.is_empty() {
        why
    } else {
        format!("{why} ({})", notes.join("; "))
    }
}

/// srun's stderr: the tasks' own stderr is framed on stdout, so a labelled line here is the
/// wrapper's shell complaining; unlabelled lines are srun's and slurmstepd's messages, kept
/// for the hosts they name.
fn on_err_line(
    line: &str,
    members: &mut [Member],
    task_of: &HashMap<usize, usize>,
    unlabelled: &mut Vec<String>,
) {
    if is_exit_notice(line) {
        return;
    }
    if let Some((task, text)) = split_label(line)
        && let Some(&i) = task_of.get(&task)
    {
        members[i].notes.push(text.to_owned());
        return;
    }
    unlabelled.push(line.to_owned());
}

fn emit_done(events: &Option<EventSink>, r: &HostResult) {
    emit(
        events,
        &r.host,
        Phase::Done,
        Some(r.status),
        r.duration,
        r.error.clone().unwrap_or_default(),
    );
}

/// Jobs that can share one step: same command, stdin and limits (output destinations may
/// differ per host).
fn same_step(a: &JobSpec, b: &JobSpec) -> bool {
    let input = match (&a.input, &b.input) {
        (Input::None, Input::None) => true,
        (Input::Bytes(x), Input::Bytes(y)) => Arc::ptr_eq(x, y) || x == y,
        (Input::File(x), Input::File(y)) => x == y,
        _ => false,
    };
    input
        && a.cmd == b.cmd
        && a.timeout == b.timeout
        && a.inactivity_timeout == b.inactivity_timeout
        && a.kill_prefix == b.kill_prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_group_jobs_that_only_differ_in_output_file() {
        let a = JobSpec::new("cat /x", Input::None).unwrap();
        let mut b = a.clone();
        b.stdout_to = OutputTo::File("/tmp/y".into());
        assert!(same_step(&a, &b));
        let mut c = a.clone();
        c.timeout = Some(Duration::from_secs(1));
        assert!(!same_step(&a, &c));
        let d = JobSpec::new("cat /z", Input::None).unwrap();
        assert!(!same_step(&a, &d));
    }

    #[test]
    fn a_vanished_allocation_is_recognised_only_for_its_job() {
        let gone = HostResult::failed(
            "h",
            Status::Unreachable,
            "the task did not start on slurm node n1 (srun: error: Slurm job 7 has expired; \
             srun: Check SLURM_JOB_ID environment variable. Expired or invalid job 7)",
            Duration::ZERO,
        );
        assert!(allocation_gone(&gone, "7"));
        assert!(!allocation_gone(&gone, "8"));
        assert!(!allocation_gone(&gone, ""));
        let dead_node = HostResult::failed(
            "h",
            Status::Unreachable,
            "the task did not start on slurm node n1 within 5s",
            Duration::ZERO,
        );
        assert!(!allocation_gone(&dead_node, "7"));
    }

    #[test]
    fn node_mentions_are_whole_words() {
        assert!(mentions(
            "srun: error: Task launch for StepId=5.0 failed on node sl2: Communication",
            "sl2"
        ));
        assert!(!mentions("failed on node sl21: x", "sl2"));
    }
}
