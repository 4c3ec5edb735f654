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

pub struct Cluster {
    hosts: Vec<String>,
    opts: ConnectOptions,
    slots: HashMap<String, Arc<Slot>>,
    limit: Arc<Semaphore>,
    control_dir: PathBuf,
    kex: OnceCell<Option<String>>,
    closed: AtomicBool,
}

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn make_control_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    // Short: a control socket path must fit in sun_path (108 bytes).
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir() && p.as_os_str().len() < 40)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
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
        Ok(Cluster {
            hosts,
            opts,
            slots,
            limit: Arc::new(Semaphore::new(parallel)),
            control_dir: make_control_dir()?,
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
        let ctl = self.control_dir.join(format!("h{}", slot.index));
        match master::launch(&opts, host, &ctl).await {
            Ok(m) => {
                let m = Arc::new(m);
                emit(
                    events,
                    host,
                    Phase::Connected,
                    None,
                    m.connect_time,
                    String::new(),
                );
                *guard = Some(m.clone());
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
                Err(r)
            }
        }
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
    /// hold a remote lock for the duration of a multi-step operation. Waits until the command
    /// prints `ready` on a line (or fails with its output); returns what it printed before.
    pub async fn hold(
        &self,
        host: &str,
        cmd: &str,
        ready: &str,
        wait: Duration,
    ) -> std::result::Result<(Holder, String), HostResult> {
        let started = Instant::now();
        let slot = self.slots.get(host).cloned().ok_or_else(|| {
            HostResult::failed(host, Status::Error, "unknown host", Duration::ZERO)
        })?;
        let m = self.master_for(host, &slot, &None).await?;
        let mut command = openssh::Session::to_raw_command(m.session.clone(), cmd);
        command
            .stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = command.spawn().await.map_err(|e| {
            HostResult::failed(
                host,
                Status::Error,
                format!("cannot start: {e}"),
                started.elapsed(),
            )
        })?;
        let stdin = child.stdin().take();
        let mut stdout = child.stdout().take();
        let mut stderr = child.stderr().take();
        let read = async {
            use tokio::io::AsyncReadExt;
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            if let Some(out) = stdout.as_mut() {
                loop {
                    let n = out.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return Err(seen);
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let lines: Vec<&[u8]> = seen.split(|b| *b == b'\n').collect();
                    if let Some(end) = lines.iter().position(|l| *l == ready.as_bytes()) {
                        return Ok(String::from_utf8_lossy(&lines[..end].join(&b'\n')).into_owned());
                    }
                }
            }
            Err(seen)
        };
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(text)) => Ok((
                Holder {
                    _stdin: stdin,
                    _child: child,
                },
                text,
            )),
            outcome => {
                let mut err = Vec::new();
                if let Some(e) = stderr.as_mut() {
                    use tokio::io::AsyncReadExt;
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), e.read_to_end(&mut err))
                            .await;
                }
                let why = match outcome {
                    Err(_) => format!("not ready after {}s", wait.as_secs()),
                    _ => format!(
                        "ended before ready: {}",
                        String::from_utf8_lossy(&err).trim()
                    ),
                };
                Err(HostResult::failed(
                    host,
                    Status::Error,
                    why,
                    started.elapsed(),
                ))
            }
        }
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
            if let Some(m) = slot.master.lock().await.take() {
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
                && let Some(pid) = m.pid
            {
                master::terminate_pid_now(pid, &m.ctl);
            }
        }
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}
