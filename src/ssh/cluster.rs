//! The fan-out engine: one master per host, kept across calls; bounded concurrency; one result
//! per requested host, in the requested order, whatever happens on the others.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OnceCell, Semaphore, mpsc, watch};

use super::job::{self, JobSpec, Outcome};
use super::master::{self, Master};
use super::options::{ConnectOptions, effective_config_argv, kex_of, preferred_kex, validate_host};
use super::persist;
use super::result::{HostResult, Status};
use crate::error::{Error, Result};

/// Progress of one host through a call, for callbacks and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Connected,
    Running,
    Done,
    /// A named step of a multi-step operation (probe, launch, provision, sshd...).
    Step(&'static str),
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Connected => "connected",
            Phase::Running => "running",
            Phase::Done => "done",
            Phase::Step(name) => name,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub host: String,
    pub phase: Phase,
    /// Set with `Done`.
    pub status: Option<Status>,
    /// Milliseconds the phase took (connect time for `Connected`, run time for `Done`).
    pub elapsed_ms: u64,
    pub detail: String,
}

pub type EventSink = mpsc::UnboundedSender<Event>;

pub(crate) fn emit(
    sink: &Option<EventSink>,
    host: &str,
    phase: Phase,
    status: Option<Status>,
    elapsed: Duration,
    detail: String,
) {
    if let Some(tx) = sink {
        let _ = tx.send(Event {
            host: host.to_owned(),
            phase,
            status,
            elapsed_ms: elapsed.as_millis() as u64,
            detail,
        });
    }
}

struct Slot {
    index: usize,
    master: Mutex<Option<Arc<Master>>>,
}

/// A default for concurrent hosts that keeps a call within the process's file-descriptor limit
/// (each in-flight command holds a mux socket and three pipes; spawning briefly doubles that).
pub fn default_max_parallel() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        lim.rlim_cur = 1024;
    }
    let soft = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    (soft.saturating_sub(64) / 8).clamp(16, 1024)
}

/// File descriptors one in-flight command holds in this process: its mux socket and three
/// pipes, doubled while spawning.
const FDS_PER_COMMAND: u64 = 8;
/// Descriptors the process needs besides the commands (runtime, Python, logs).
const FDS_RESERVED: u64 = 64;

/// A resource limit, read by `get` (a `getrlimit` call: the resource's type differs between
/// glibc and musl, so the call is made where the constant is named).
fn rlimit(get: impl FnOnce(&mut libc::rlimit) -> libc::c_int) -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    (get(&mut lim) == 0).then_some(lim)
}

/// What stops `parallel` concurrent commands within a soft RLIMIT_NOFILE of `soft` (hard
/// `hard`): `Ok(None)` fits, `Ok(Some(n))` fits once the soft limit is raised to `n`, `Err` is
/// the message naming the limit.
fn fd_plan(parallel: u64, soft: u64, hard: u64) -> std::result::Result<Option<u64>, String> {
    let need = parallel * FDS_PER_COMMAND + FDS_RESERVED;
    if need <= soft {
        Ok(None)
    } else if need <= hard {
        Ok(Some(need))
    } else {
        Err(format!(
            "max_parallel={parallel} needs about {need} open files, but RLIMIT_NOFILE allows \
             {hard} (hard limit; soft {soft}): lower max_parallel to {} or raise the limit \
             (ulimit -n)",
            hard.saturating_sub(FDS_RESERVED) / FDS_PER_COMMAND
        ))
    }
}

/// Whether `hosts` new ssh masters (one process each) fit in a soft RLIMIT_NPROC of `soft` for
/// a user already running `running` processes.
fn nproc_plan(hosts: u64, soft: u64, running: u64) -> std::result::Result<(), String> {
    // The masters, plus a few short-lived `ssh -G` probes and launchers.
    if running + hosts + 16 <= soft {
        Ok(())
    } else {
        Err(format!(
            "{hosts} hosts need one ssh master process each, but RLIMIT_NPROC allows {soft} \
             processes for this user and {running} are running: raise it (ulimit -u) or use \
             fewer hosts per cluster"
        ))
    }
}

/// Check, before any host is touched, that the process may open what `parallel` concurrent
/// commands need and start one master per host. The soft file limit is raised (this process
/// only, up to its hard limit) only when the caller asked for more parallelism than it allows:
/// the default parallelism is derived from the soft limit and never needs it.
fn check_limits(hosts: usize, parallel: usize, explicit_parallel: bool) -> Result<()> {
    let parallel = parallel.min(hosts) as u64;
    // SAFETY: getrlimit writes into the struct it is given.
    let nofile = rlimit(|l| unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, l) });
    if explicit_parallel && let Some(lim) = nofile {
        match fd_plan(parallel, lim.rlim_cur, lim.rlim_max).map_err(Error::InvalidArgument)? {
            None => {}
            Some(raised) => {
                let new = libc::rlimit {
                    rlim_cur: raised,
                    rlim_max: lim.rlim_max,
                };
                // SAFETY: setrlimit reads the struct we pass; raising a soft limit up to the
                // hard limit needs no privilege.
                if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "max_parallel={parallel} needs about {raised} open files and \
                         RLIMIT_NOFILE is {}: {}",
                        lim.rlim_cur,
                        std::io::Error::last_os_error()
                    )));
                }
            }
        }
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // The kernel does not apply RLIMIT_NPROC to root.
    if !root
        // SAFETY: getrlimit writes into the struct it is given.
        && let Some(lim) = rlimit(|l| unsafe { libc::getrlimit(libc::RLIMIT_NPROC, l) })
        && lim.rlim_cur != libc::RLIM_INFINITY
    {
        let running = own_process_count();
        nproc_plan(hosts as u64, lim.rlim_cur, running).map_err(Error::InvalidArgument)?;
    }
    Ok(())
}

/// How many processes this user runs (what RLIMIT_NPROC counts).
fn own_process_count() -> u64 {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
                .count() as u64
        })
        .unwrap_or(0)
}

pub struct Cluster {
    hosts: Vec<String>,
    opts: ConnectOptions,
    slots: HashMap<String, Arc<Slot>>,
    limit: Arc<Semaphore>,
    /// Bounds concurrent `ssh -M` launches (see `ConnectOptions::max_connect`).
    connect_limit: Arc<Semaphore>,
    control_dir: PathBuf,
    /// The checked per-user directory of persistent sockets, when `persist` is on.
    persist_dir: Option<PathBuf>,
    kex: OnceCell<Option<String>>,
    closed: AtomicBool,
}

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Remove the control directories (`cvs-core-<pid>-<n>`) that processes killed with SIGKILL left
/// in `base`: only directories owned by this user whose PID no longer runs. A PID that was
/// reused keeps its directory (harmless; swept once that process ends too).
fn sweep_stale_control_dirs(base: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("cvs-core-")) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(p, n)| n.parse::<u64>().ok().and(p.parse::<i32>().ok()))
        else {
            continue;
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || pid <= 0 {
            continue;
        }
        // SAFETY: signal 0 only checks whether the PID exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            stop_masters_of(&entry.path());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// SIGTERM the ssh masters (daemons) a killed process left behind on the control sockets of
/// `dir`: processes of this user whose command line names a socket in it. They would otherwise
/// hold their connections until their idle timeout.
fn stop_masters_of(dir: &std::path::Path) {
    master::term_masters_under(&dir.join("h"), |_, _| true);
}

fn make_control_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    // Short: a control socket path must fit in sun_path (108 bytes).
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir() && p.as_os_str().len() < 40)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| sweep_stale_control_dirs(&base));
    let dir = base.join(format!(
        "cvs-core-{}-{}",
        std::process::id(),
        DIR_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::InvalidArgument(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

impl Cluster {
    pub fn new(
        hosts: Vec<String>,
        opts: ConnectOptions,
        max_parallel: Option<usize>,
    ) -> Result<Self> {
        if hosts.is_empty() {
            return Err(Error::InvalidArgument(
                "a cluster needs at least one host".into(),
            ));
        }
        let mut slots = HashMap::with_capacity(hosts.len());
        for (index, h) in hosts.iter().enumerate() {
            validate_host(h)?;
            let slot = Arc::new(Slot {
                index,
                master: Mutex::new(None),
            });
            if slots.insert(h.clone(), slot).is_some() {
                return Err(Error::InvalidArgument(format!(
                    "host {h:?} is listed twice"
                )));
            }
        }
        let parallel = max_parallel.unwrap_or_else(default_max_parallel).max(1);
        check_limits(hosts.len(), parallel, max_parallel.is_some())?;
        let persist_dir = opts
            .persist_dir
            .as_deref()
            .map(persist::prepare_dir)
            .transpose()?;
        Ok(Cluster {
            hosts,
            connect_limit: Arc::new(Semaphore::new(opts.max_connect.max(1))),
            opts,
            slots,
            limit: Arc::new(Semaphore::new(parallel)),
            control_dir: make_control_dir()?,
            persist_dir,
            kex: OnceCell::new(),
            closed: AtomicBool::new(false),
        })
    }

    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// Check that every host of a call belongs to this cluster and appears once.
    pub fn check_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for h in hosts {
            if !self.slots.contains_key(h) {
                return Err(Error::InvalidArgument(format!(
                    "host {h:?} is not in this cluster"
                )));
            }
            if !seen.insert(h) {
                return Err(Error::InvalidArgument(format!(
                    "host {h:?} is requested twice"
                )));
            }
        }
        Ok(())
    }

    /// Decide the key exchange once per cluster: prefer curve25519 unless the user's ssh
    /// configuration chose an algorithm list itself.
    async fn kex(&self) -> Option<String> {
        self.kex
            .get_or_init(|| async {
                let host = self.hosts.first()?;
                let probe = |ignore: bool| {
                    let argv = effective_config_argv(&self.opts, host, ignore);
                    let program = self.opts.ssh_program.clone();
                    async move {
                        let out = tokio::process::Command::new(program)
                            .args(argv)
                            .stdin(std::process::Stdio::null())
                            .output()
                            .await
                            .ok()?;
                        out.status
                            .success()
                            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
                    }
                };
                let (user, default) = tokio::join!(probe(false), probe(true));
                preferred_kex(kex_of(&user?)?, kex_of(&default?)?)
            })
            .await
            .clone()
    }

    async fn master_for(
        &self,
        host: &str,
        slot: &Slot,
        events: &Option<EventSink>,
    ) -> std::result::Result<Arc<Master>, HostResult> {
        let mut guard = slot.master.lock().await;
        if let Some(m) = guard.as_ref() {
            return Ok(m.clone());
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(HostResult::failed(
                host,
                Status::Error,
                "the cluster is closed",
                Duration::ZERO,
            ));
        }
        // The connect permit is released only after the outcome is reported, so progress never
        // shows more than `max_connect` hosts connecting at once.
        let mut permit = None;
        let connected = match &self.persist_dir {
            Some(dir) => self.persistent_master(host, dir, events, &mut permit).await,
            None => {
                let ctl = self.control_dir.join(format!("h{}", slot.index));
                self.launch(host, &ctl, events, &mut permit).await
            }
        };
        match connected {
            Ok(m) => {
                let m = Arc::new(m);
                emit(
                    events,
                    host,
                    Phase::Connected,
                    None,
                    m.connect_time,
                    if m.reattached {
                        "reattached".to_owned()
                    } else {
                        String::new()
                    },
                );
                *guard = Some(m.clone());
                drop(permit);
                Ok(m)
            }
            Err(f) => {
                let r = HostResult::failed(host, f.status, f.message, Duration::ZERO);
                emit(
                    events,
                    host,
                    Phase::Done,
                    Some(r.status),
                    Duration::ZERO,
                    r.error.clone().unwrap_or_default(),
                );
                drop(permit);
                Err(r)
            }
        }
    }

    /// Launch a master for `host` on `ctl`, within the cluster's bound on concurrent connects.
    async fn launch(
        &self,
        host: &str,
        ctl: &std::path::Path,
        events: &Option<EventSink>,
        permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> std::result::Result<Master, master::ConnectFailure> {
        *permit = Some(
            self.connect_limit
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| master::ConnectFailure {
                    status: Status::Error,
                    message: "the cluster is closed".into(),
                })?,
        );
        emit(
            events,
            host,
            Phase::Connecting,
            None,
            Duration::ZERO,
            String::new(),
        );
        let mut opts = self.opts.clone();
        opts.kex = self.kex().await;
        master::launch(&opts, host, ctl).await
    }

    /// Re-attach to this configuration's persistent master of `host`, or start it. The socket
    /// is locked across the decision so two processes never start two masters on it.
    async fn persistent_master(
        &self,
        host: &str,
        dir: &std::path::Path,
        events: &Option<EventSink>,
        permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> std::result::Result<Master, master::ConnectFailure> {
        let started = Instant::now();
        let identity = persist::identity_json(&persist::identity(&self.opts, host));
        let ctl = dir.join(persist::socket_name(&identity));
        let failure = |message: String| master::ConnectFailure {
            status: Status::Error,
            message,
        };
        // Another process may be connecting this host right now: wait as long as it may take.
        let wait = self.opts.connect_timeout * 3 + Duration::from_secs(5);
        let _lock = persist::SocketLock::acquire(&ctl, wait)
            .await
            .map_err(|e| failure(format!("cannot lock {}: {e}", ctl.display())))?;
        match persist::inspect(&ctl, &identity).await {
            persist::Found::Live(pid) => return Ok(master::attach(&ctl, pid, started)),
            persist::Found::Foreign(pid) => {
                return Err(failure(format!(
                    "control socket {} is served by process {pid}, which cvs-core did not \
                     start: it is neither used nor stopped; end it or use another control \
                     directory",
                    ctl.display()
                )));
            }
            persist::Found::Nothing => master::end_stale_launcher(&ctl),
        }
        let mut m = self.launch(host, &ctl, events, permit).await?;
        m.persistent = true;
        if let Err(e) = persist::write_sidecar(&ctl, &identity) {
            // Unrecorded, the master could never be re-attached (or told apart): end it.
            if let Some(pid) = m.pid {
                master::terminate_pid(pid, &ctl, Duration::from_millis(200)).await;
            }
            persist::remove_files(&ctl);
            return Err(failure(format!(
                "cannot record {}: {e}",
                ctl.with_extension("json").display()
            )));
        }
        Ok(m)
    }

    /// Forget `dead` if it is still the host's master (another call may have replaced it).
    async fn drop_master(&self, slot: &Slot, dead: &Arc<Master>) {
        let mut guard = slot.master.lock().await;
        if guard.as_ref().is_some_and(|m| Arc::ptr_eq(m, dead)) {
            *guard = None;
            if let Some(pid) = dead.pid {
                master::terminate_pid(pid, &dead.ctl, Duration::from_millis(200)).await;
            }
        }
    }

    async fn run_one(
        self: Arc<Self>,
        host: String,
        spec: JobSpec,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> HostResult {
        let started = Instant::now();
        let Some(slot) = self.slots.get(&host).cloned() else {
            return HostResult::failed(&host, Status::Error, "unknown host", Duration::ZERO);
        };
        let _permit = match self.limit.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => {
                return HostResult::failed(
                    &host,
                    Status::Error,
                    "the cluster is closed",
                    Duration::ZERO,
                );
            }
        };
        if *cancel.borrow() {
            return HostResult::failed(
                &host,
                Status::Cancelled,
                "cancelled before start",
                Duration::ZERO,
            );
        }
        // A dead master (idle expiry, server restart, network blip) is replaced once, and only
        // when the command provably never started.
        for attempt in 0..2 {
            let m = match self.master_for(&host, &slot, &events).await {
                Ok(m) => m,
                Err(mut r) => {
                    r.duration = started.elapsed();
                    return r;
                }
            };
            emit(
                &events,
                &host,
                Phase::Running,
                None,
                Duration::ZERO,
                String::new(),
            );
            match job::run(m.session.clone(), &host, &spec, cancel.clone()).await {
                Outcome::Ran(r) => {
                    emit(
                        &events,
                        &host,
                        Phase::Done,
                        Some(r.status),
                        r.duration,
                        r.error.clone().unwrap_or_default(),
                    );
                    return r;
                }
                Outcome::NotStarted(why) => {
                    let alive = master::is_alive(&m.ctl).await;
                    if !alive {
                        self.drop_master(&slot, &m).await;
                    }
                    if alive || attempt == 1 {
                        let r = HostResult::failed(
                            &host,
                            Status::Error,
                            format!("could not start the command: {why}"),
                            started.elapsed(),
                        );
                        emit(
                            &events,
                            &host,
                            Phase::Done,
                            Some(r.status),
                            r.duration,
                            r.error.clone().unwrap_or_default(),
                        );
                        return r;
                    }
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Run one job per host, concurrently within the cluster's limit; results in `jobs` order.
    pub async fn run_many(
        self: &Arc<Self>,
        jobs: Vec<(String, JobSpec)>,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> Vec<HostResult> {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(host, spec)| {
                let this = self.clone();
                let events = events.clone();
                let cancel = cancel.clone();
                let h = host.clone();
                (h, tokio::spawn(this.run_one(host, spec, events, cancel)))
            })
            .collect();
        let mut results = Vec::with_capacity(handles.len());
        for (host, handle) in handles {
            results.push(handle.await.unwrap_or_else(|e| {
                HostResult::failed(
                    &host,
                    Status::Error,
                    format!("internal error: {e}"),
                    Duration::ZERO,
                )
            }));
        }
        results
    }

    /// Establish the masters of `hosts` concurrently (no command runs); the failures, by host.
    pub async fn connect(self: &Arc<Self>, hosts: &[String]) -> Vec<HostResult> {
        let mut pending = tokio::task::JoinSet::new();
        for h in hosts {
            let (this, h) = (self.clone(), h.clone());
            pending.spawn(async move {
                let slot = this.slots.get(&h).cloned()?;
                this.master_for(&h, &slot, &None).await.err()
            });
        }
        let mut failed = Vec::new();
        while let Some(joined) = pending.join_next().await {
            if let Ok(Some(r)) = joined {
                failed.push(r);
            }
        }
        failed.sort_by_key(|r| hosts.iter().position(|h| *h == r.host));
        failed
    }

    /// Start `cmd` on `host` and keep it running until the returned holder is dropped: used to
    /// hold a remote lock for the duration of a multi-step operation. `stages` are the lines the
    /// command prints on its way to ready, each with how long it may take (a wait for a lock
    /// is then told apart from a probe that hangs); returns what it printed before the last.
    /// On a timeout, a failure or `cancel`, the remote command is killed (with `kill_prefix`)
    /// before this returns.
    pub async fn hold(
        &self,
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
        let slot = self
            .slots
            .get(host)
            .cloned()
            .ok_or_else(|| fail(0, Status::Error, "unknown host".into()))?;
        let m = self
            .master_for(host, &slot, &None)
            .await
            .map_err(|result| HoldFailure { result, stage: 0 })?;
        let token = job::new_token();
        let marked = crate::render::remote::job_command(&token, cmd)
            .map_err(|e| fail(0, Status::Error, e.to_string()))?;
        let mut command = openssh::Session::to_raw_command(m.session.clone(), marked);
        command
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = command
            .spawn()
            .await
            .map_err(|e| fail(0, Status::Error, format!("cannot start: {e}")))?;
        let stdin = child.stdin().take();
        let mut stdout = child.stdout().take();
        let mut stderr = child.stderr().take();
        let mut seen: Vec<u8> = Vec::new();
        let mut failure = None;
        'stages: for (stage, (marker, limit)) in stages.iter().enumerate() {
            let deadline = tokio::time::Instant::now() + *limit;
            loop {
                if printed_line(&seen, marker) {
                    break;
                }
                let Some(out) = stdout.as_mut() else {
                    failure = Some((stage, Status::Error, "no output channel".to_owned()));
                    break 'stages;
                };
                let mut buf = [0u8; 4096];
                use tokio::io::AsyncReadExt;
                tokio::select! {
                    n = out.read(&mut buf) => match n.unwrap_or(0) {
                        0 => {
                            failure = Some((stage, Status::Error, "ended before ready".to_owned()));
                            break 'stages;
                        }
                        n => seen.extend_from_slice(&buf[..n]),
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        failure = Some((stage, Status::Timeout, format!(
                            "no '{marker}' within {}s", limit.as_secs()
                        )));
                        break 'stages;
                    }
                    _ = cancelled(&mut cancel) => {
                        failure = Some((stage, Status::Cancelled, "cancelled".to_owned()));
                        break 'stages;
                    }
                }
            }
        }
        if let Some((stage, status, why)) = failure {
            let mut err = Vec::new();
            if let Some(e) = stderr.as_mut() {
                use tokio::io::AsyncReadExt;
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), e.read_to_end(&mut err)).await;
            }
            let err = String::from_utf8_lossy(&err).trim().to_owned();
            let why = if err.is_empty() {
                why
            } else {
                format!("{why}: {err}")
            };
            drop(stdin);
            drop(child);
            let killed = job::kill_remote(m.session.clone(), token, kill_prefix).await;
            return Err(fail(stage, status, format!("{why}; {}", killed.describe())));
        }
        let text = text_before(&seen, stages.last().map_or("", |(m, _)| *m));
        Ok((
            Holder {
                _stdin: stdin,
                _child: child,
            },
            text,
        ))
    }

    /// PIDs of the live masters (for resource accounting and tests).
    pub async fn master_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for h in &self.hosts {
            if let Some(m) = self.slots[h].master.lock().await.as_ref()
                && let Some(pid) = m.pid
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// End every master and remove the control directory. Later calls fail per host.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut masters = Vec::new();
        for slot in self.slots.values() {
            // A persistent master outlives the cluster: that is what it is for.
            if let Some(m) = slot.master.lock().await.take()
                && !m.persistent
            {
                masters.push(m);
            }
        }
        let mut closing = tokio::task::JoinSet::new();
        for m in masters {
            closing.spawn(async move { master::close(&m).await });
        }
        while closing.join_next().await.is_some() {}
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}

/// Whether `seen` (a held command's output so far) has the complete line `marker`.
pub(crate) fn printed_line(seen: &[u8], marker: &str) -> bool {
    let lines: Vec<&[u8]> = seen.split(|b| *b == b'\n').collect();
    lines[..lines.len() - 1].contains(&marker.as_bytes())
}

/// What a held command printed before the line `last` (its final stage marker).
pub(crate) fn text_before(seen: &[u8], last: &str) -> String {
    let lines: Vec<&[u8]> = seen.split(|b| *b == b'\n').collect();
    let end = lines
        .iter()
        .position(|l| *l == last.as_bytes())
        .unwrap_or(0);
    String::from_utf8_lossy(&lines[..end].join(&b'\n')).into_owned()
}

/// Resolves when `cancel` turns true; never when its sender is gone (nobody can cancel then).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why [`Cluster::hold`] gave up: the host's result, and the index of the stage it was waiting
/// for.
#[derive(Debug)]
pub struct HoldFailure {
    pub result: HostResult,
    pub stage: usize,
}

/// A remote command kept running (see [`Cluster::hold`]); dropping it closes the command's stdin
/// and channel, which ends it on the host.
pub struct Holder {
    // Field order is drop order: stdin first (EOF ends the remote command), then the channel.
    _stdin: Option<openssh::ChildStdin>,
    _child: openssh::Child<Arc<openssh::Session>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Masters are daemons (ssh -f): if the cluster was not closed, stop them by PID so they
        // do not wait out their idle timeout.
        for slot in self.slots.values() {
            if let Ok(mut guard) = slot.master.try_lock()
                && let Some(m) = guard.take()
                && !m.persistent
                && let Some(pid) = m.pid
            {
                master::terminate_pid_now(pid, &m.ctl);
            }
        }
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_limit_plan() {
        // 100 commands need 864 descriptors.
        assert_eq!(fd_plan(100, 1024, 4096), Ok(None));
        assert_eq!(fd_plan(200, 1024, 4096), Ok(Some(1664)));
        let err = fd_plan(1000, 1024, 4096).unwrap_err();
        assert!(err.contains("RLIMIT_NOFILE allows 4096"), "{err}");
        assert!(err.contains("lower max_parallel to 504"), "{err}");
    }

    #[test]
    fn process_limit_plan() {
        assert!(nproc_plan(1024, 4096, 100).is_ok());
        let err = nproc_plan(1024, 1024, 100).unwrap_err();
        assert!(err.contains("RLIMIT_NPROC allows 1024"), "{err}");
        assert!(err.contains("100 are running"), "{err}");
    }
}
