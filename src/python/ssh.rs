//! `Cluster`, `Results`, `HostResult`: the fan-out engine in Python.
//!
//! Every network wait releases the GIL. The calling thread wakes every 50 ms to deliver
//! progress events (callback and `logging`, in the caller's own thread) and to check signals, so
//! Ctrl-C raises `KeyboardInterrupt` at once and the remote commands are killed behind it.
//!
//! Each call has an asyncio twin (`exec_async`, ...): the same preparation and engine work,
//! awaited through `aio::spawn` instead of blocking the thread.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use tokio::sync::{mpsc, watch};

use super::aio::{self, Calls};
use super::config::PyClusterConfig;
use super::errors::{IntoPyResult, classes, guard};
use crate::config::{
    DEFAULT_PERSIST, PERSIST_ENV, parse_persist, persist_seconds, resolve_persist,
};
use crate::error::Error;
use crate::render::remote::{read_file_command, write_file_command};
use crate::slurm::{SlurmCluster, SlurmOptions};
use crate::ssh::options::DEFAULT_MAX_CONNECT;
use crate::ssh::runtime::runtime;
use crate::ssh::{
    self, ConnectOptions, Event, HostKeyPolicy, HostResult, Input, JobSpec, OutputTo, Phase,
    Secret, Status,
};
use crate::transport::{AnyTransport, Kind, TRANSPORT_ENV, resolve_kind};

pub(crate) const LOGGER: &str = "cvs_core";

pub(crate) fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    super::errors::to_pyerr(py, Error::InvalidArgument(msg.into()))
}

/// Drive `fut` to completion on the runtime with the GIL released, delivering events and
/// honouring Ctrl-C. On a Python exception (signal, callback error) the call is cancelled and
/// the exception raised once the future has finished (it kills the remote commands and waits
/// for the kills), so when `KeyboardInterrupt` reaches the caller the remote work is stopped.
pub(crate) fn wait<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = T> + Send + 'static,
    cancel: watch::Sender<bool>,
    events: mpsc::UnboundedReceiver<Event>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<T> {
    match wait_to_end(py, fut, cancel, events, progress, CANCEL_GRACE) {
        (Some(v), None) => Ok(v),
        (_, Some(e)) => Err(e),
        (None, None) => Err(invalid(
            py,
            "internal error: the call ended without a result",
        )),
    }
}

/// How long a cancelled call may take to stop its remote commands (kills are bounded by
/// `KILL_GRACE` + 5 s each, and run in parallel) before the exception is raised anyway.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(15);

/// [`wait`], returning both what the future produced (when it finished) and the exception that
/// cancelled it (if any): a cancelled lifecycle step still reports what its cleanup did. After
/// a first exception, the future gets `grace` to finish; a second Ctrl-C stops waiting.
pub(crate) fn wait_to_end<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = T> + Send + 'static,
    cancel: watch::Sender<bool>,
    mut events: mpsc::UnboundedReceiver<Event>,
    progress: Option<&Bound<'_, PyAny>>,
    grace: Duration,
) -> (Option<T>, Option<PyErr>) {
    let rt = runtime();
    let mut handle = rt.spawn(fut);
    let logger = match py
        .import("logging")
        .and_then(|l| l.call_method1("getLogger", (LOGGER,)))
    {
        Ok(l) => l,
        Err(e) => {
            let _ = cancel.send(true);
            return (None, Some(e));
        }
    };
    let debug = logger
        .call_method1("isEnabledFor", (10,))
        .and_then(|v| v.extract::<bool>())
        .unwrap_or(false);
    let mut raised: Option<PyErr> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let (done, batch) = py.detach(|| {
            rt.block_on(async {
                let mut batch = Vec::new();
                let done = tokio::select! {
                    r = &mut handle => Some(r),
                    ev = events.recv() => {
                        if let Some(ev) = ev { batch.push(ev); }
                        None
                    }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => None,
                };
                while let Ok(ev) = events.try_recv() {
                    batch.push(ev);
                }
                (done, batch)
            })
        });
        // After a callback error the callback is not called again.
        let cb = if raised.is_none() { progress } else { None };
        let delivered = deliver(&batch, cb, &logger, debug);
        if let Err(e) = delivered.and_then(|()| py.check_signals()) {
            match raised {
                // A second interrupt while the remote work is being stopped: stop waiting.
                Some(first) => return (None, Some(first)),
                None => {
                    let _ = cancel.send(true);
                    deadline = Some(Instant::now() + grace);
                    raised = Some(e);
                }
            }
        }
        if let Some(joined) = done {
            return match joined {
                Ok(v) => (Some(v), raised),
                Err(e) => (
                    None,
                    Some(raised.unwrap_or_else(|| invalid(py, format!("internal error: {e}")))),
                ),
            };
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return (None, raised);
        }
    }
}

/// `wait` for a future that neither reports progress nor can be cancelled remotely.
fn wait_plain<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = T> + Send + 'static,
) -> PyResult<T> {
    let (tx, _rx) = watch::channel(false);
    let (_etx, erx) = mpsc::unbounded_channel();
    wait(py, fut, tx, erx, None)
}

pub(crate) fn deliver(
    batch: &[Event],
    progress: Option<&Bound<'_, PyAny>>,
    logger: &Bound<'_, PyAny>,
    debug: bool,
) -> PyResult<()> {
    for ev in batch {
        if debug {
            let line = match (ev.phase, ev.status) {
                (Phase::Connected, _) if ev.detail.is_empty() => {
                    format!("{}: connected in {} ms", ev.host, ev.elapsed_ms)
                }
                // A persistent master an earlier process left: no handshake was made.
                (Phase::Connected, _) => format!(
                    "{}: connected in {} ms ({})",
                    ev.host, ev.elapsed_ms, ev.detail
                ),
                (Phase::Done, Some(s)) if ev.detail.is_empty() => {
                    format!("{}: {} in {} ms", ev.host, s.as_str(), ev.elapsed_ms)
                }
                (Phase::Done, Some(s)) => format!(
                    "{}: {} in {} ms: {}",
                    ev.host,
                    s.as_str(),
                    ev.elapsed_ms,
                    ev.detail
                ),
                (phase, _) => format!("{}: {}", ev.host, phase.as_str()),
            };
            logger.call_method1("debug", (line,))?;
        }
        if let Some(cb) = progress {
            cb.call1((ev.host.as_str(), ev.phase.as_str()))?;
        }
    }
    Ok(())
}

pub(crate) fn summary(results: &[HostResult], elapsed: Duration) -> String {
    let mut counts: Vec<(Status, usize)> = Vec::new();
    for r in results {
        match counts.iter_mut().find(|(s, _)| *s == r.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.status, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    format!(
        "{} host{} in {:.2}s: {}",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        elapsed.as_secs_f64(),
        parts.join(", ")
    )
}

pub(crate) fn to_duration(
    py: Python<'_>,
    what: &str,
    secs: Option<f64>,
) -> PyResult<Option<Duration>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(invalid(
            py,
            format!("{what} must be a positive number of seconds, got {s}"),
        )),
    }
}

fn input_of(py: Python<'_>, stdin: Option<&Bound<'_, PyAny>>) -> PyResult<Input> {
    let Some(obj) = stdin.filter(|o| !o.is_none()) else {
        return Ok(Input::None);
    };
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Input::Bytes(Arc::new(b.as_bytes().to_vec())));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Input::Bytes(Arc::new(s.to_string().into_bytes())));
    }
    if let Ok(b) = obj.extract::<Vec<u8>>() {
        return Ok(Input::Bytes(Arc::new(b)));
    }
    Err(invalid(py, "stdin must be bytes or str"))
}

/// One host's outcome of a call.
#[pyclass(frozen, module = "cvs_core", name = "HostResult")]
pub struct PyHostResult {
    inner: Arc<HostResult>,
    path: Option<String>,
}

#[pymethods]
impl PyHostResult {
    #[getter]
    fn host(&self) -> &str {
        &self.inner.host
    }
    /// ok, exit_nonzero, signal, timeout, inactivity_timeout, unreachable, auth_failed,
    /// host_key_mismatch, cancelled or error.
    #[getter]
    fn status(&self) -> &'static str {
        self.inner.status.as_str()
    }
    /// The exit code; -1 when the command produced none.
    #[getter]
    fn exit_code(&self) -> i32 {
        self.inner.exit_code
    }
    #[getter]
    fn signal(&self) -> Option<&str> {
        self.inner.signal.as_deref()
    }
    /// stdout decoded as UTF-8 (invalid bytes replaced); `stdout_bytes` has the raw bytes.
    #[getter]
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.inner.stdout).into_owned()
    }
    #[getter]
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.inner.stderr).into_owned()
    }
    #[getter]
    fn stdout_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.stdout)
    }
    #[getter]
    fn stderr_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.stderr)
    }
    #[getter]
    fn duration_s(&self) -> f64 {
        self.inner.duration.as_secs_f64()
    }
    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.error.as_deref()
    }
    #[getter]
    fn ok(&self) -> bool {
        self.inner.status == Status::Ok
    }
    /// For transfers: the local path written (download) or the remote path (upload).
    #[getter]
    fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    fn __repr__(&self) -> String {
        format!(
            "HostResult(host={:?}, status={:?}, exit_code={}, stdout={} bytes, stderr={} bytes)",
            self.inner.host,
            self.inner.status.as_str(),
            self.inner.exit_code,
            self.inner.stdout.len(),
            self.inner.stderr.len()
        )
    }
}

/// Hosts that produced the same (stdout, status, exit code).
#[pyclass(frozen, module = "cvs_core", name = "OutputGroup")]
pub struct PyOutputGroup {
    #[pyo3(get)]
    hosts: Vec<String>,
    #[pyo3(get)]
    status: &'static str,
    #[pyo3(get)]
    exit_code: i32,
    #[pyo3(get)]
    stdout: String,
}

#[pymethods]
impl PyOutputGroup {
    fn __repr__(&self) -> String {
        format!(
            "OutputGroup(hosts={:?}, status={:?}, exit_code={})",
            self.hosts, self.status, self.exit_code
        )
    }
}

/// One `HostResult` per requested host, in the requested order.
#[pyclass(frozen, module = "cvs_core", name = "Results")]
pub struct PyResults {
    items: Vec<Arc<HostResult>>,
    paths: Vec<Option<String>>,
    index: HashMap<String, usize>,
    elapsed: Duration,
}

impl PyResults {
    pub(crate) fn new(
        results: Vec<HostResult>,
        paths: Vec<Option<String>>,
        elapsed: Duration,
    ) -> Self {
        let index = results
            .iter()
            .enumerate()
            .map(|(i, r)| (r.host.clone(), i))
            .collect();
        PyResults {
            items: results.into_iter().map(Arc::new).collect(),
            paths,
            index,
            elapsed,
        }
    }

    fn item(&self, i: usize) -> PyHostResult {
        PyHostResult {
            inner: self.items[i].clone(),
            path: self.paths.get(i).cloned().flatten(),
        }
    }
}

#[pymethods]
impl PyResults {
    fn __len__(&self) -> usize {
        self.items.len()
    }
    fn __iter__(slf: PyRef<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let list: Vec<PyHostResult> = (0..slf.items.len()).map(|i| slf.item(i)).collect();
        let list = pyo3::types::PyList::new(py, list)?;
        Ok(list.try_iter()?.into_any().unbind())
    }
    /// `results["host"]` or `results[i]`.
    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<PyHostResult> {
        if let Ok(host) = key.extract::<String>() {
            return match self.index.get(&host) {
                Some(&i) => Ok(self.item(i)),
                None => Err(pyo3::exceptions::PyKeyError::new_err(host)),
            };
        }
        let i: isize = key.extract()?;
        let n = self.items.len() as isize;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            return Err(pyo3::exceptions::PyIndexError::new_err(
                "result index out of range",
            ));
        }
        let _ = py;
        Ok(self.item(j as usize))
    }
    fn __contains__(&self, host: &str) -> bool {
        self.index.contains_key(host)
    }
    #[getter]
    fn hosts(&self) -> Vec<String> {
        self.items.iter().map(|r| r.host.clone()).collect()
    }
    /// True when every host's status is ok.
    #[getter]
    fn ok(&self) -> bool {
        self.items.iter().all(|r| r.status == Status::Ok)
    }
    #[getter]
    fn failed_hosts(&self) -> Vec<String> {
        self.items
            .iter()
            .filter(|r| r.status != Status::Ok)
            .map(|r| r.host.clone())
            .collect()
    }
    #[getter]
    fn elapsed_s(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }
    /// Group hosts with identical (stdout, status, exit code), in order of first appearance.
    fn fold(&self) -> Vec<PyOutputGroup> {
        let plain: Vec<HostResult> = self.items.iter().map(|r| (**r).clone()).collect();
        ssh::fold(&plain)
            .into_iter()
            .map(|g| PyOutputGroup {
                hosts: g.hosts,
                status: g.status.as_str(),
                exit_code: g.exit_code,
                stdout: String::from_utf8_lossy(&g.stdout).into_owned(),
            })
            .collect()
    }
    /// A one-line summary: `64 hosts in 0.12s: 63 ok, 1 unreachable`.
    fn summary(&self) -> String {
        let plain: Vec<HostResult> = self.items.iter().map(|r| (**r).clone()).collect();
        summary(&plain, self.elapsed)
    }
    /// The results as JSON: a list of per-host objects (stdout/stderr decoded lossily).
    fn to_json(&self) -> String {
        let rows: Vec<serde_json::Value> = self
            .items
            .iter()
            .zip(&self.paths)
            .map(|(r, p)| {
                serde_json::json!({
                    "host": r.host,
                    "status": r.status.as_str(),
                    "exit_code": r.exit_code,
                    "signal": r.signal,
                    "stdout": String::from_utf8_lossy(&r.stdout),
                    "stderr": String::from_utf8_lossy(&r.stderr),
                    "duration_s": r.duration.as_secs_f64(),
                    "error": r.error,
                    "path": p,
                })
            })
            .collect();
        serde_json::Value::Array(rows).to_string()
    }
    fn __repr__(&self) -> String {
        format!("Results({})", self.summary())
    }
}

/// Parallel SSH to a fixed set of hosts, one OpenSSH master per host kept across calls.
#[pyclass(frozen, module = "cvs_core", name = "Cluster")]
pub struct PyCluster {
    pub(crate) inner: Arc<AnyTransport>,
    /// Bumped by `interrupt()`: every call running at that moment is cancelled. Ctrl-C reaches
    /// only the main thread, so a caller that runs calls on worker threads (the compat layer's
    /// sharded path) stops them through this.
    interrupts: watch::Sender<u64>,
    /// This cluster's async calls: `close()` lets those that were cancelled finish killing
    /// their remote commands first, as the kills need the connections.
    pub(crate) calls: Arc<Calls>,
}

struct Call {
    jobs: Vec<(String, JobSpec)>,
    paths: Vec<Option<String>>,
    what: String,
    /// Set for a download: its remote path, and whether a failure raises.
    download: Option<(String, bool)>,
}

impl PyCluster {
    fn select_hosts(&self, py: Python<'_>, hosts: Option<Vec<String>>) -> PyResult<Vec<String>> {
        let hosts = hosts.unwrap_or_else(|| self.inner.hosts().to_vec());
        self.inner
            .check_hosts(hosts.iter().map(String::as_str))
            .py_err(py)?;
        Ok(hosts)
    }

    /// The engine call of `jobs`, cancelled when `cancel` turns true or by `interrupt()`.
    fn work(
        &self,
        jobs: Vec<(String, JobSpec)>,
        events: Option<mpsc::UnboundedSender<Event>>,
        mut cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Vec<HostResult>> + Send + 'static {
        let cluster = self.inner.clone();
        let (engine_tx, engine_rx) = watch::channel(false);
        let mut interrupts = self.interrupts.subscribe();
        interrupts.mark_unchanged();
        // The engine's cancel fires on this call's own cancel or on interrupt() from any thread.
        async move {
            let run = cluster.run_many(jobs, events, engine_rx);
            tokio::pin!(run);
            let (mut own, mut other) = (true, true);
            loop {
                tokio::select! {
                    r = &mut run => return r,
                    c = cancel.changed(), if own => match c {
                        Ok(()) if *cancel.borrow() => { let _ = engine_tx.send(true); }
                        Ok(()) => {}
                        Err(_) => own = false,
                    },
                    c = interrupts.changed(), if other => match c {
                        Ok(()) => { let _ = engine_tx.send(true); }
                        Err(_) => other = false,
                    },
                }
            }
        }
    }

    /// Let cancelled async calls finish killing (they need the connections), then close.
    fn closing(&self, py: Python<'_>) -> impl Future<Output = ()> + Send + 'static {
        self.calls.cancel_abandoned(py);
        let (cluster, calls) = (self.inner.clone(), self.calls.clone());
        async move {
            calls.settled().await;
            cluster.close().await;
        }
    }

    fn log_start(py: Python<'_>, call: &Call) -> PyResult<()> {
        let logger = py.import("logging")?.call_method1("getLogger", (LOGGER,))?;
        logger.call_method1(
            "debug",
            (format!("{} on {} hosts", call.what, call.jobs.len()),),
        )?;
        Ok(())
    }

    fn run(
        &self,
        py: Python<'_>,
        call: Call,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyResults> {
        Self::log_start(py, &call)?;
        let started = Instant::now();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let work = self.work(call.jobs, Some(ev_tx), cancel_rx);
        let results = wait(py, work, cancel_tx, ev_rx, progress)?;
        if call.download.is_some() {
            remove_failed_downloads(&results, &call.paths);
        }
        finish_call(py, &call.what, results, call.paths, started.elapsed())
    }

    /// The asyncio twin of `run`: the awaitable of the call's `Results` (or, for a download,
    /// of its `{host: path}` dict). A call that cannot start (a bad argument, a host not in the
    /// cluster) gives an awaitable that raises.
    fn run_async<'py>(
        &self,
        py: Python<'py>,
        prepare: impl FnOnce() -> PyResult<Call>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = match guard(py, prepare) {
            Ok(call) => call,
            Err(e) => return aio::failed(py, e),
        };
        guard(py, || {
            Self::log_start(py, &call)?;
            let started = Instant::now();
            let Call {
                jobs,
                paths,
                what,
                download,
            } = call;
            let kept = paths.clone();
            let is_download = download.is_some();
            let cancelled_what = what.clone();
            aio::spawn(
                py,
                progress,
                &self.calls,
                CANCEL_GRACE,
                |events, cancel| {
                    let work = self.work(jobs, events, cancel);
                    async move {
                        let results = work.await;
                        if is_download {
                            remove_failed_downloads(&results, &kept);
                        }
                        (results, started.elapsed())
                    }
                },
                Box::new(move |py, (results, elapsed)| {
                    let results = finish_call(py, &what, results, paths, elapsed)?;
                    match download {
                        None => Ok(Py::new(py, results)?.into_any()),
                        Some((remote, check)) => Ok(download_dict(py, results, &remote, check)?
                            .into_any()
                            .unbind()),
                    }
                }),
                Box::new(move |(results, elapsed)| {
                    Some((
                        "info",
                        format!(
                            "{cancelled_what}: cancelled: {}",
                            summary(results, *elapsed)
                        ),
                    ))
                }),
            )
        })
    }

    fn spec(
        py: Python<'_>,
        cmd: String,
        input: Input,
        timeout: Option<f64>,
        inactivity_timeout: Option<f64>,
    ) -> PyResult<JobSpec> {
        let mut spec = JobSpec::new(cmd, input).py_err(py)?;
        spec.timeout = to_duration(py, "timeout", timeout)?;
        spec.inactivity_timeout = to_duration(py, "inactivity_timeout", inactivity_timeout)?;
        Ok(spec)
    }
}

pub(crate) fn path_string(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<String> {
    py.import("os")?.getattr("fspath")?.call1((obj,))?.extract()
}

#[pymethods]
impl PyCluster {
    #[new]
    #[pyo3(signature = (hosts, user = None, key = None, *, port = None, ssh_config = None,
        known_hosts = None, host_key_policy = "strict", jump_host = None, connect_timeout = 10.0,
        max_parallel = None, password = None, idle_timeout = 600.0, keepalive = 30.0,
        transport = None, slurm = None, persist = None, control_dir = None, max_connect = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        hosts: Vec<String>,
        user: Option<String>,
        key: Option<&Bound<'_, PyAny>>,
        port: Option<u16>,
        ssh_config: Option<&Bound<'_, PyAny>>,
        known_hosts: Option<&Bound<'_, PyAny>>,
        host_key_policy: &str,
        jump_host: Option<String>,
        connect_timeout: f64,
        max_parallel: Option<usize>,
        password: Option<String>,
        idle_timeout: f64,
        keepalive: f64,
        transport: Option<String>,
        slurm: Option<&Bound<'_, PyDict>>,
        persist: Option<&Bound<'_, PyAny>>,
        control_dir: Option<&Bound<'_, PyAny>>,
        max_connect: Option<usize>,
    ) -> PyResult<Self> {
        guard(py, || {
            // An explicit argument wins; otherwise CVS_CORE_TRANSPORT; otherwise ssh.
            let env = |k: &str| std::env::var(k).ok();
            let kind = match &transport {
                Some(t) => resolve_kind(Some(t), None, env("SLURM_JOB_ID").as_deref()),
                None => resolve_kind(
                    None,
                    env(TRANSPORT_ENV).as_deref(),
                    env("SLURM_JOB_ID").as_deref(),
                ),
            }
            .py_err(py)?;
            if max_parallel == Some(0) {
                return Err(invalid(py, "max_parallel must be at least 1"));
            }
            if max_connect == Some(0) {
                return Err(invalid(py, "max_connect must be at least 1"));
            }
            // An explicit `persist` wins; otherwise CVS_CORE_PERSIST; otherwise off.
            let explicit = persist_arg(py, persist)?;
            let persist = resolve_persist(explicit, env(PERSIST_ENV).as_deref(), None)
                .map_err(|e| invalid(py, e))?;
            if kind == Kind::Slurm {
                let opts = slurm_options(py, slurm, connect_timeout)?;
                let inner = SlurmCluster::new(hosts, opts).py_err(py)?;
                return Ok(PyCluster {
                    inner: Arc::new(AnyTransport::Slurm(Arc::new(inner))),
                    interrupts: watch::channel(0).0,
                    calls: Calls::new(),
                });
            }
            let opt_path = |o: Option<&Bound<'_, PyAny>>| -> PyResult<Option<PathBuf>> {
                o.filter(|o| !o.is_none())
                    .map(|o| path_string(py, o).map(PathBuf::from))
                    .transpose()
            };
            let opts = ConnectOptions {
                user,
                key: opt_path(key)?,
                port,
                ssh_config: opt_path(ssh_config)?,
                known_hosts: opt_path(known_hosts)?,
                host_key_policy: HostKeyPolicy::parse(host_key_policy).py_err(py)?,
                jump_host,
                connect_timeout: to_duration(py, "connect_timeout", Some(connect_timeout))?
                    .unwrap_or(Duration::from_secs(10)),
                idle_timeout: to_duration(py, "idle_timeout", Some(idle_timeout))?
                    .unwrap_or(Duration::from_secs(600)),
                // A lost host (partition, power loss) is noticed after ~3 keepalives instead of
                // hanging a command until its own timeout.
                keepalive: to_duration(py, "keepalive", Some(keepalive))?
                    .unwrap_or(Duration::from_secs(30)),
                // Keys are preferred; a password reaches OpenSSH only through its askpass
                // helper (src/ssh/master.rs), never a command line or the environment.
                password: password.filter(|p| !p.is_empty()).map(Secret::new),
                max_connect: max_connect.unwrap_or(DEFAULT_MAX_CONNECT),
                ..ConnectOptions::default()
            };
            let opts = match persist {
                // The master's ControlPersist is the persistence itself.
                Some(idle) => ConnectOptions {
                    idle_timeout: idle,
                    persist_dir: Some(match opt_path(control_dir)? {
                        Some(dir) => dir,
                        None => ssh::persist::default_dir(),
                    }),
                    ..opts
                },
                None => opts,
            };
            let inner = ssh::Cluster::new(hosts, opts, max_parallel).py_err(py)?;
            Ok(PyCluster {
                inner: Arc::new(AnyTransport::Ssh(Arc::new(inner))),
                interrupts: watch::channel(0).0,
                calls: Calls::new(),
            })
        })
    }

    /// Build from a `ClusterConfig` (hosts, username, priv_key_file); keywords as `Cluster()`.
    /// Without a `transport=` keyword the configuration's effective transport is used, and the
    /// file's `slurm` block is passed as `slurm=` (a `slurm=` keyword's keys win over it). The
    /// Slurm engine ignores `key` and `password`: a Slurm configuration may have no key file.
    #[classmethod]
    #[pyo3(signature = (config, **kwargs))]
    fn from_config<'py>(
        cls: &Bound<'py, pyo3::types::PyType>,
        config: PyRef<'py, PyClusterConfig>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = cls.py();
        let kw = PyDict::new(py);
        kw.set_item("user", config.username_str())?;
        if !config.key_str().is_empty() {
            kw.set_item("key", config.key_str())?;
        }
        if let Some(pw) = config.password_str() {
            kw.set_item("password", pw)?;
        }
        if let Some(extra) = kwargs {
            kw.update(extra.as_mapping())?;
        }
        let given = |name: &str| -> PyResult<Option<Bound<'py, PyAny>>> {
            Ok(kw.get_item(name)?.filter(|v| !v.is_none()))
        };
        if given("transport")?.is_none() {
            kw.set_item("transport", config.effective_kind().as_str())?;
        }
        // The file's `persist` is the weakest: a `persist=` keyword or CVS_CORE_PERSIST wins.
        if given("persist")?.is_none()
            && std::env::var_os(PERSIST_ENV).is_none()
            && let Some(d) = config.persist_duration()
        {
            kw.set_item("persist", d.as_secs())?;
        }
        let file_slurm = config.slurm_pairs();
        if !file_slurm.is_empty() {
            let merged = PyDict::new(py);
            for (k, v) in file_slurm {
                merged.set_item(k, v)?;
            }
            match given("slurm")? {
                Some(theirs) => {
                    // Not a dict: passed on as given, for Cluster() to refuse.
                    if let Ok(theirs) = theirs.cast::<PyDict>() {
                        merged.update(theirs.as_mapping())?;
                        kw.set_item("slurm", merged)?;
                    }
                }
                None => kw.set_item("slurm", merged)?,
            }
        }
        cls.call((config.host_list(),), Some(&kw))
    }

    #[getter]
    fn hosts(&self) -> Vec<String> {
        self.inner.hosts().to_vec()
    }

    /// Run `cmd` on every host (or `hosts`). `timeout` bounds the whole command, and
    /// `inactivity_timeout` the silence between output chunks; either kills the remote process
    /// tree. `stdin` (bytes or str, any size) is sent to every host.
    #[pyo3(signature = (cmd, hosts = None, timeout = None, inactivity_timeout = None, stdin = None, *, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        py: Python<'_>,
        cmd: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        inactivity_timeout: Option<f64>,
        stdin: Option<&Bound<'_, PyAny>>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyResults> {
        guard(py, || {
            let call = self.exec_call(py, cmd, hosts, timeout, inactivity_timeout, stdin)?;
            self.run(py, call, progress)
        })
    }

    /// `await`able `exec`: the same arguments and `Results`. Cancelling the await (or an
    /// `asyncio.wait_for` timeout) kills the remote commands as a timeout does.
    #[pyo3(signature = (cmd, hosts = None, timeout = None, inactivity_timeout = None, stdin = None, *, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn exec_async<'py>(
        &self,
        py: Python<'py>,
        cmd: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        inactivity_timeout: Option<f64>,
        stdin: Option<&Bound<'py, PyAny>>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run_async(
            py,
            || self.exec_call(py, cmd, hosts, timeout, inactivity_timeout, stdin),
            progress,
        )
    }

    /// Run a different command per host: `{host: cmd}` (any subset, in the dict's order).
    #[pyo3(signature = (commands, timeout = None, inactivity_timeout = None, stdin = None, *, progress = None))]
    fn exec_per_host(
        &self,
        py: Python<'_>,
        commands: &Bound<'_, PyDict>,
        timeout: Option<f64>,
        inactivity_timeout: Option<f64>,
        stdin: Option<&Bound<'_, PyAny>>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyResults> {
        guard(py, || {
            let call = self.per_host_call(py, commands, timeout, inactivity_timeout, stdin)?;
            self.run(py, call, progress)
        })
    }

    /// `await`able `exec_per_host`.
    #[pyo3(signature = (commands, timeout = None, inactivity_timeout = None, stdin = None, *, progress = None))]
    fn exec_per_host_async<'py>(
        &self,
        py: Python<'py>,
        commands: &Bound<'py, PyDict>,
        timeout: Option<f64>,
        inactivity_timeout: Option<f64>,
        stdin: Option<&Bound<'py, PyAny>>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run_async(
            py,
            || self.per_host_call(py, commands, timeout, inactivity_timeout, stdin),
            progress,
        )
    }

    /// Copy the local file `local` to `remote` on every host (or `hosts`), streamed: any size.
    #[pyo3(signature = (local, remote, hosts = None, timeout = None, *, progress = None))]
    fn upload(
        &self,
        py: Python<'_>,
        local: &Bound<'_, PyAny>,
        remote: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyResults> {
        guard(py, || {
            let call = self.upload_call(py, local, remote, hosts, timeout)?;
            self.run(py, call, progress)
        })
    }

    /// `await`able `upload`.
    #[pyo3(signature = (local, remote, hosts = None, timeout = None, *, progress = None))]
    fn upload_async<'py>(
        &self,
        py: Python<'py>,
        local: &Bound<'py, PyAny>,
        remote: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run_async(
            py,
            || self.upload_call(py, local, remote, hosts, timeout),
            progress,
        )
    }

    /// Copy a different file per host: `{host: (local, remote)}`.
    #[pyo3(signature = (files, timeout = None, *, progress = None))]
    fn upload_per_host(
        &self,
        py: Python<'_>,
        files: &Bound<'_, PyDict>,
        timeout: Option<f64>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyResults> {
        guard(py, || {
            let call = self.upload_per_host_call(py, files, timeout)?;
            self.run(py, call, progress)
        })
    }

    /// `await`able `upload_per_host`.
    #[pyo3(signature = (files, timeout = None, *, progress = None))]
    fn upload_per_host_async<'py>(
        &self,
        py: Python<'py>,
        files: &Bound<'py, PyDict>,
        timeout: Option<f64>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run_async(
            py,
            || self.upload_per_host_call(py, files, timeout),
            progress,
        )
    }

    /// Copy `remote` from every host (or `hosts`) to `local_dir/<host>/<basename>`, streamed:
    /// any size. Returns `{host: local_path}`. With `check=True` (default) a failure on any
    /// host raises `TransferError` (its `.results` has every host's outcome, `.paths` the
    /// files that did arrive); with `check=False` failed hosts are left out of the dict.
    #[pyo3(signature = (remote, local_dir, hosts = None, timeout = None, *, check = true, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn download<'py>(
        &self,
        py: Python<'py>,
        remote: String,
        local_dir: &Bound<'py, PyAny>,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        check: bool,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        guard(py, || {
            let call = self.download_call(py, remote.clone(), local_dir, hosts, timeout, check)?;
            let results = self.run(py, call, progress)?;
            download_dict(py, results, &remote, check)
        })
    }

    /// `await`able `download`: the same `{host: local_path}` and `TransferError`.
    #[pyo3(signature = (remote, local_dir, hosts = None, timeout = None, *, check = true, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn download_async<'py>(
        &self,
        py: Python<'py>,
        remote: String,
        local_dir: &Bound<'py, PyAny>,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        check: bool,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run_async(
            py,
            || self.download_call(py, remote, local_dir, hosts, timeout, check),
            progress,
        )
    }
    /// PIDs of the connected OpenSSH masters (one per connected host).
    fn master_pids(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        let cluster = self.inner.clone();
        wait_plain(py, async move { cluster.master_pids().await })
    }

    /// Cancel every call running on this cluster, from any thread: each kills its remote
    /// commands as Ctrl-C does and returns with its unfinished hosts `cancelled`. Later calls
    /// are not affected.
    fn interrupt(&self) {
        self.interrupts.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// End every master. The cluster cannot be used afterwards. Async calls that were
    /// cancelled get up to 15 s to kill their remote commands first.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        wait_plain(py, self.closing(py))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    /// `async with Cluster(...) as c`: connections are made by the first call, as with `with`.
    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        aio::ready(slf.py(), slf.clone().into_any())
    }

    /// Closes the cluster (as `close()`) without blocking the loop; exceptions propagate.
    #[pyo3(signature = (*_args))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _args: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let closing = self.closing(py);
        // A task of its own: cancelling the `async with` must not stop the close halfway.
        aio::detached(py, async move {
            closing.await;
            false
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Cluster({} hosts, transport={:?})",
            self.inner.hosts().len(),
            self.inner.kind()
        )
    }

    /// `"ssh"` or `"slurm"`: the engine this cluster resolved to.
    #[getter]
    fn transport(&self) -> &'static str {
        self.inner.kind()
    }
}

impl PyCluster {
    fn exec_call(
        &self,
        py: Python<'_>,
        cmd: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        inactivity_timeout: Option<f64>,
        stdin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Call> {
        let hosts = self.select_hosts(py, hosts)?;
        let spec = Self::spec(
            py,
            cmd.clone(),
            input_of(py, stdin)?,
            timeout,
            inactivity_timeout,
        )?;
        let n = hosts.len();
        Ok(Call {
            jobs: hosts.into_iter().map(|h| (h, spec.clone())).collect(),
            paths: vec![None; n],
            what: format!("exec {:?}", truncate(&cmd, 120)),
            download: None,
        })
    }

    fn per_host_call(
        &self,
        py: Python<'_>,
        commands: &Bound<'_, PyDict>,
        timeout: Option<f64>,
        inactivity_timeout: Option<f64>,
        stdin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Call> {
        let input = input_of(py, stdin)?;
        let mut jobs = Vec::with_capacity(commands.len());
        for (h, c) in commands.iter() {
            let host: String = h.extract()?;
            let cmd: String = c.extract()?;
            jobs.push((
                host,
                Self::spec(py, cmd, input.clone(), timeout, inactivity_timeout)?,
            ));
        }
        self.inner
            .check_hosts(jobs.iter().map(|(h, _)| h.as_str()))
            .py_err(py)?;
        let n = jobs.len();
        Ok(Call {
            jobs,
            paths: vec![None; n],
            what: "exec_per_host".into(),
            download: None,
        })
    }

    fn upload_call(
        &self,
        py: Python<'_>,
        local: &Bound<'_, PyAny>,
        remote: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
    ) -> PyResult<Call> {
        let hosts = self.select_hosts(py, hosts)?;
        let local = path_string(py, local)?;
        let map = hosts
            .into_iter()
            .map(|h| (h, (local.clone(), remote.clone())))
            .collect();
        self.upload_jobs(py, map, timeout)
    }

    fn upload_per_host_call(
        &self,
        py: Python<'_>,
        files: &Bound<'_, PyDict>,
        timeout: Option<f64>,
    ) -> PyResult<Call> {
        let mut map = Vec::with_capacity(files.len());
        for (h, pair) in files.iter() {
            let host: String = h.extract()?;
            let pair = pair.cast::<PyTuple>().map_err(|_| {
                PyValueError::new_err(format!("files[{host:?}] must be a (local, remote) tuple"))
            })?;
            if pair.len() != 2 {
                return Err(PyValueError::new_err(format!(
                    "files[{host:?}] must be a (local, remote) tuple"
                )));
            }
            let local = path_string(py, &pair.get_item(0)?)?;
            let remote: String = pair.get_item(1)?.extract()?;
            map.push((host, (local, remote)));
        }
        self.upload_jobs(py, map, timeout)
    }

    fn upload_jobs(
        &self,
        py: Python<'_>,
        map: Vec<(String, (String, String))>,
        timeout: Option<f64>,
    ) -> PyResult<Call> {
        self.inner
            .check_hosts(map.iter().map(|(h, _)| h.as_str()))
            .py_err(py)?;
        let mut jobs = Vec::with_capacity(map.len());
        let mut paths = Vec::with_capacity(map.len());
        for (host, (local, remote)) in map {
            if !std::path::Path::new(&local).is_file() {
                return Err(invalid(py, format!("local file {local:?} does not exist")));
            }
            let cmd = write_file_command(&remote).py_err(py)?;
            jobs.push((
                host,
                Self::spec(py, cmd, Input::File(PathBuf::from(local)), timeout, None)?,
            ));
            paths.push(Some(remote));
        }
        Ok(Call {
            jobs,
            paths,
            what: "upload".into(),
            download: None,
        })
    }

    fn download_call(
        &self,
        py: Python<'_>,
        remote: String,
        local_dir: &Bound<'_, PyAny>,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        check: bool,
    ) -> PyResult<Call> {
        let hosts = self.select_hosts(py, hosts)?;
        let local_dir = PathBuf::from(path_string(py, local_dir)?);
        let base = std::path::Path::new(&remote)
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .ok_or_else(|| invalid(py, format!("remote path {remote:?} names no file")))?;
        let cmd = read_file_command(&remote).py_err(py)?;
        let mut jobs = Vec::with_capacity(hosts.len());
        let mut paths = Vec::with_capacity(hosts.len());
        for h in hosts {
            let dir = local_dir.join(&h);
            std::fs::create_dir_all(&dir)
                .map_err(|e| invalid(py, format!("cannot create {}: {e}", dir.display())))?;
            let dest = dir.join(&base);
            paths.push(Some(dest.display().to_string()));
            let mut spec = Self::spec(py, cmd.clone(), Input::None, timeout, None)?;
            spec.stdout_to = OutputTo::File(dest);
            jobs.push((h, spec));
        }
        Ok(Call {
            jobs,
            paths,
            what: format!("download {remote}"),
            download: Some((remote, check)),
        })
    }
}

/// Log a call's one-line summary (INFO) and wrap its results.
fn finish_call(
    py: Python<'_>,
    what: &str,
    results: Vec<HostResult>,
    paths: Vec<Option<String>>,
    elapsed: Duration,
) -> PyResult<PyResults> {
    let logger = py.import("logging")?.call_method1("getLogger", (LOGGER,))?;
    logger.call_method1("info", (format!("{what}: {}", summary(&results, elapsed)),))?;
    Ok(PyResults::new(results, paths, elapsed))
}

/// A partial or empty file from a failed host must not pass for a download.
fn remove_failed_downloads(results: &[HostResult], paths: &[Option<String>]) {
    for (r, p) in results.iter().zip(paths) {
        if r.status != Status::Ok
            && let Some(p) = p
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A download's `{host: local_path}` of the hosts that succeeded, or, with `check` and any
/// failure, `TransferError` carrying that dict and every host's result.
fn download_dict<'py>(
    py: Python<'py>,
    results: PyResults,
    remote: &str,
    check: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let ok = PyDict::new(py);
    for (r, p) in results.items.iter().zip(&results.paths) {
        if r.status == Status::Ok
            && let Some(p) = p
        {
            ok.set_item(&r.host, p)?;
        }
    }
    if check && !results.ok() {
        let c = classes(py)?;
        let failed = results.failed_hosts();
        let err = c.transfer_error.bind(py).call1((format!(
            "download of {remote:?} failed on {}/{} hosts: {:?}",
            failed.len(),
            results.items.len(),
            failed
        ),))?;
        err.setattr("paths", &ok)?;
        err.setattr("results", Py::new(py, results)?)?;
        return Err(PyErr::from_value(err));
    }
    Ok(ok)
}
/// The `slurm={...}` options: placement keys as in the cluster file's `slurm` block. The job
/// defaults to the allocation the process runs in (`SLURM_JOB_ID`).
fn slurm_options(
    py: Python<'_>,
    slurm: Option<&Bound<'_, PyDict>>,
    connect_timeout: f64,
) -> PyResult<SlurmOptions> {
    let mut opts = SlurmOptions {
        connect_timeout: to_duration(py, "connect_timeout", Some(connect_timeout))?
            .unwrap_or(Duration::from_secs(10)),
        ..SlurmOptions::default()
    };
    opts.placement.job_id = std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty());
    if let Some(d) = slurm {
        for (k, v) in d.iter() {
            let key: String = k.extract()?;
            let value: Option<String> = if v.is_none() {
                None
            } else if let Ok(n) = v.extract::<u64>() {
                Some(n.to_string())
            } else {
                Some(v.extract().map_err(|_| {
                    invalid(
                        py,
                        format!("slurm.{key} must be a string, got {}", v.get_type()),
                    )
                })?)
            };
            let p = &mut opts.placement;
            match key.as_str() {
                "job_id" => p.job_id = value,
                "partition" => p.partition = value,
                "account" => p.account = value,
                "reservation" => p.reservation = value,
                "time" => p.time = value,
                "chdir" => opts.chdir = value.unwrap_or_else(|| "/".into()),
                "srun" => opts.srun = value.unwrap_or_else(|| "srun".into()),
                "salloc" => opts.salloc = value.unwrap_or_else(|| "salloc".into()),
                "scontrol" => opts.scontrol = value.unwrap_or_else(|| "scontrol".into()),
                "scancel" => opts.scancel = value.unwrap_or_else(|| "scancel".into()),
                other => {
                    return Err(invalid(
                        py,
                        format!(
                            "unknown slurm option {other:?} (known: job_id, partition, account, \
                             reservation, time, chdir, srun, salloc, scontrol, scancel)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(opts)
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// `persist=` as given: `None` = not given (the environment decides); `True`/`False`; a number
/// of seconds; a string as the cluster file's (`"10m"`).
fn persist_arg(
    py: Python<'_>,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Option<Duration>>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let parsed = if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
        Ok(b.is_true().then_some(DEFAULT_PERSIST))
    } else if let Ok(text) = v.extract::<String>() {
        parse_persist(&text)
    } else if let Ok(secs) = v.extract::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            Err(format!("{secs} is not a number of seconds"))
        } else {
            persist_seconds(secs.ceil() as u64)
        }
    } else {
        Err(format!(
            "expected a duration ('10m'), seconds, True or False, got {}",
            v.get_type().name()?
        ))
    };
    parsed
        .map(Some)
        .map_err(|e| invalid(py, format!("persist: {e}")))
}

/// End the persistent SSH masters in `control_dir` (default: the per-user directory
/// `Cluster(persist=...)` uses), of `hosts` only when given. Returns the hosts whose master
/// was ended, one entry per master.
#[pyfunction]
#[pyo3(signature = (hosts = None, control_dir = None))]
fn disconnect_all(
    py: Python<'_>,
    hosts: Option<Vec<String>>,
    control_dir: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<String>> {
    guard(py, || {
        let dir = match control_dir.filter(|d| !d.is_none()) {
            Some(d) => PathBuf::from(path_string(py, d)?),
            None => ssh::persist::default_dir(),
        };
        let ended = wait_plain(py, async move {
            ssh::persist::disconnect(&dir, hosts.as_deref()).await
        })?
        .py_err(py)?;
        Ok(ended.into_iter().map(|e| e.host).collect())
    })
}

/// Parse a `persist` text as the cluster file and `CVS_CORE_PERSIST` take it: seconds, or
/// `None` for off. `ValueError` names what is accepted.
#[pyfunction]
fn parse_persist_duration(py: Python<'_>, text: &str) -> PyResult<Option<f64>> {
    parse_persist(text)
        .map(|d| d.map(|d| d.as_secs_f64()))
        .map_err(|e| invalid(py, e))
}

/// The per-user directory persistent control sockets live in when none is named.
#[pyfunction]
fn default_control_dir() -> String {
    ssh::persist::default_dir().display().to_string()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(disconnect_all, m)?)?;
    m.add_function(wrap_pyfunction!(default_control_dir, m)?)?;
    m.add_function(wrap_pyfunction!(parse_persist_duration, m)?)?;
    m.add_class::<PyCluster>()?;
    m.add_class::<PyResults>()?;
    m.add_class::<PyHostResult>()?;
    m.add_class::<PyOutputGroup>()?;
    Ok(())
}
