//! `ContainerLifecycle`: the native container driver in Python, blocking and awaitable
//! (`*_async`, on the same runtime through `aio::spawn`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tokio::sync::{mpsc, watch};

use super::aio;
use super::config::PyClusterConfig;
use super::errors::{IntoPyResult, guard};
use super::ssh::{CANCEL_GRACE, PyCluster, PyResults, invalid, to_duration, wait, wait_to_end};
use crate::ssh::HostResult;
use crate::ssh::lifecycle::{Ctx, Driver, HostReport, LifecycleOptions, Op, Report};

/// One host's part of a lifecycle operation.
#[pyclass(frozen, module = "cvs_core", name = "HostReport")]
pub struct PyHostReport {
    inner: HostReport,
}

#[pymethods]
impl PyHostReport {
    #[getter]
    fn host(&self) -> &str {
        &self.inner.host
    }
    /// attach, start, launch, recreate, verify, refuse (plan/setup); skip/start (sshd);
    /// remove/keep (teardown); status.
    #[getter]
    fn action(&self) -> &str {
        &self.inner.action
    }
    #[getter]
    fn ok(&self) -> bool {
        self.inner.ok
    }
    #[getter]
    fn detail(&self) -> &str {
        &self.inner.detail
    }
    #[getter]
    fn container_id(&self) -> &str {
        &self.inner.container_id
    }
    #[getter]
    fn started_at(&self) -> &str {
        &self.inner.started_at
    }
    #[getter]
    fn container_image(&self) -> &str {
        &self.inner.container_image
    }
    #[getter]
    fn local_image(&self) -> &str {
        &self.inner.local_image
    }
    #[getter]
    fn config_hash(&self) -> &str {
        &self.inner.config_hash
    }
    #[getter]
    fn running(&self) -> bool {
        self.inner.running
    }
    #[getter]
    fn sshd_up(&self) -> bool {
        self.inner.sshd_up
    }
    /// Launched by cvs-core but its provisioning never completed (the next setup replaces it).
    #[getter]
    fn unfinished(&self) -> bool {
        self.inner.unfinished
    }
    /// Who holds the sshd port when it is not this container's sshd ("" otherwise).
    #[getter]
    fn sshd_holder(&self) -> &str {
        &self.inner.sshd_holder
    }
    #[getter]
    fn output(&self) -> &str {
        &self.inner.output
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        host_dict(py, &self.inner)
    }
    fn __repr__(&self) -> String {
        format!(
            "HostReport(host={:?}, action={:?}, ok={}, detail={:?})",
            self.inner.host, self.inner.action, self.inner.ok, self.inner.detail
        )
    }
}

fn host_dict<'py>(py: Python<'py>, h: &HostReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("host", &h.host)?;
    d.set_item("action", &h.action)?;
    d.set_item("ok", h.ok)?;
    d.set_item("detail", &h.detail)?;
    d.set_item("container_id", &h.container_id)?;
    d.set_item("started_at", &h.started_at)?;
    d.set_item("container_image", &h.container_image)?;
    d.set_item("local_image", &h.local_image)?;
    d.set_item("config_hash", &h.config_hash)?;
    d.set_item("running", h.running)?;
    d.set_item("sshd_up", h.sshd_up)?;
    d.set_item("unfinished", h.unfinished)?;
    d.set_item("sshd_holder", &h.sshd_holder)?;
    d.set_item("output", &h.output)?;
    Ok(d)
}

/// The outcome of plan/setup/setup_sshd/teardown/status: per-host detail and a one-line
/// summary.
#[pyclass(frozen, module = "cvs_core", name = "LifecycleReport")]
pub struct PyLifecycleReport {
    inner: Report,
}

#[pymethods]
impl PyLifecycleReport {
    #[getter]
    fn op(&self) -> &str {
        self.inner.op
    }
    /// The decision: launch, attach, verify_ok, verify_failed, refuse_partial,
    /// refuse_probe_failed, refuse_image_skew, refuse_unreadable_sha, refuse_drift, or an
    /// outcome such as launch_failed, provision_failed, sshd_ready, removed, kept, status.
    #[getter]
    fn kind(&self) -> &str {
        &self.inner.kind
    }
    #[getter]
    fn ok(&self) -> bool {
        self.inner.ok
    }
    #[getter]
    fn message(&self) -> &str {
        &self.inner.message
    }
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }
    #[getter]
    fn elapsed_s(&self) -> f64 {
        self.inner.elapsed.as_secs_f64()
    }
    #[getter]
    fn hosts(&self) -> Vec<PyHostReport> {
        self.inner
            .hosts
            .iter()
            .map(|h| PyHostReport { inner: h.clone() })
            .collect()
    }
    fn __getitem__(&self, host: &str) -> PyResult<PyHostReport> {
        self.inner
            .hosts
            .iter()
            .find(|h| h.host == host)
            .map(|h| PyHostReport { inner: h.clone() })
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(host.to_owned()))
    }
    fn __bool__(&self) -> bool {
        self.inner.ok
    }
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("op", self.inner.op)?;
        d.set_item("kind", &self.inner.kind)?;
        d.set_item("ok", self.inner.ok)?;
        d.set_item("message", &self.inner.message)?;
        d.set_item("warnings", self.inner.warnings.clone())?;
        d.set_item("elapsed_s", self.inner.elapsed.as_secs_f64())?;
        let hosts = PyList::empty(py);
        for h in &self.inner.hosts {
            hosts.append(host_dict(py, h)?)?;
        }
        d.set_item("hosts", hosts)?;
        Ok(d)
    }
    fn __repr__(&self) -> String {
        format!(
            "LifecycleReport(op={:?}, kind={:?}, ok={}, message={:?})",
            self.inner.op, self.inner.kind, self.inner.ok, self.inner.message
        )
    }
}

/// Run, attach to, check and remove the per-node containers of a `ClusterConfig`.
#[pyclass(frozen, module = "cvs_core", name = "ContainerLifecycle")]
pub struct PyContainerLifecycle {
    driver: Arc<Driver>,
    cluster: Py<PyCluster>,
}

/// How long an interrupted lifecycle step may take to stop its remote work and remove what it
/// created (kills and removals are each bounded) before the interrupt is raised anyway.
const CLEANUP_GRACE: Duration = Duration::from_secs(150);

fn default_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{now:x}-{:x}", std::process::id())
}

impl PyContainerLifecycle {
    fn call(
        &self,
        py: Python<'_>,
        progress: Option<&Bound<'_, PyAny>>,
        op: Op,
    ) -> PyResult<PyLifecycleReport> {
        guard(py, || self.call_unguarded(py, progress, op))
    }

    fn call_unguarded(
        &self,
        py: Python<'_>,
        progress: Option<&Bound<'_, PyAny>>,
        op: Op,
    ) -> PyResult<PyLifecycleReport> {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let driver = self.driver.clone();
        let fut = async move {
            let cx = Ctx {
                events: Some(ev_tx),
                cancel: cancel_rx,
            };
            driver.run_op(op, &cx).await
        };
        let (report, interrupted) = wait_to_end(py, fut, cancel_tx, ev_rx, progress, CLEANUP_GRACE);
        if let Some(err) = interrupted {
            // The step stopped its remote work and removed what it created before this
            // returns; the exception carries that report (`exc.report`).
            if let Some(report) = report {
                let logger = py
                    .import("logging")?
                    .call_method1("getLogger", ("cvs_core",))?;
                logger.call_method1("warning", (format!("{}: {}", report.op, report.message),))?;
                let value = err.value(py);
                value.setattr("report", PyLifecycleReport { inner: report })?;
            }
            return Err(err);
        }
        let report = report.ok_or_else(|| invalid(py, "internal error: no report"))?;
        log_report(py, report)
    }

    /// The asyncio twin of `call`. Cancelled, the step stops its remote work and removes what
    /// it created in the background (as an interrupted blocking step does before it raises);
    /// its report is then logged as a warning, if the loop still runs.
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        progress: Option<&Bound<'py, PyAny>>,
        op: Op,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard(py, || {
            let driver = self.driver.clone();
            aio::spawn(
                py,
                progress,
                &self.cluster.get().calls,
                CLEANUP_GRACE,
                |events, cancel| async move { driver.run_op(op, &Ctx { events, cancel }).await },
                Box::new(|py, report| Ok(Py::new(py, log_report(py, report)?)?.into_any())),
                Box::new(|report| Some(("warning", format!("{}: {}", report.op, report.message)))),
            )
        })
    }

    fn exec_call(
        &self,
        py: Python<'_>,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
    ) -> PyResult<(Vec<String>, Option<Duration>)> {
        let cluster = self.driver.cluster();
        let hosts = hosts.unwrap_or_else(|| cluster.hosts().to_vec());
        cluster
            .check_hosts(hosts.iter().map(String::as_str))
            .py_err(py)?;
        Ok((hosts, to_duration(py, "timeout", timeout)?))
    }

    /// The work of `exec`: render the in-container commands, then run them on the cluster.
    fn exec_work(
        &self,
        hosts: Vec<String>,
        cmd: String,
        timeout: Option<Duration>,
        cx: Ctx,
    ) -> impl Future<Output = crate::error::Result<Vec<HostResult>>> + Send + 'static {
        let driver = self.driver.clone();
        async move {
            let jobs = driver.exec_jobs(&hosts, &cmd, timeout, &cx).await?;
            Ok(driver.cluster().run_many(jobs, cx.events, cx.cancel).await)
        }
    }
}

/// Log a finished step (its outcome, then its warnings) and wrap its report.
fn log_report(py: Python<'_>, report: Report) -> PyResult<PyLifecycleReport> {
    let logger = py
        .import("logging")?
        .call_method1("getLogger", ("cvs_core",))?;
    let level = if report.ok { "info" } else { "error" };
    logger.call_method1(level, (format!("{}: {}", report.op, report.message),))?;
    for w in &report.warnings {
        logger.call_method1("warning", (w.as_str(),))?;
    }
    Ok(PyLifecycleReport { inner: report })
}

#[pymethods]
impl PyContainerLifecycle {
    #[new]
    #[pyo3(signature = (config, *, cluster = None, ssh_config = None, known_hosts = None,
        host_key_policy = "strict", connect_timeout = 10.0, pull = None, start_timeout = 900.0,
        sshd_port = 2224, recreate = false, run_id = None, owner = None, inline_provision = false,
        lock = true, keepalive = 30.0, provision_timeout = 1800.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        config: Bound<'_, PyClusterConfig>,
        cluster: Option<Py<PyCluster>>,
        ssh_config: Option<&Bound<'_, PyAny>>,
        known_hosts: Option<&Bound<'_, PyAny>>,
        host_key_policy: &str,
        connect_timeout: f64,
        pull: Option<String>,
        start_timeout: f64,
        sshd_port: u16,
        recreate: bool,
        run_id: Option<String>,
        owner: Option<String>,
        inline_provision: bool,
        lock: bool,
        keepalive: f64,
        provision_timeout: f64,
    ) -> PyResult<Self> {
        guard(py, || {
            let spec = config
                .get()
                .container_spec()
                .ok_or_else(|| invalid(py, "the configuration has no container block"))?;
            let script =
                crate::ssh::local::read_file_bytes(&spec.setup_script, "container setup_script")
                    .py_err(py)?;
            let cluster = match cluster {
                Some(c) => c,
                None => {
                    let kw = PyDict::new(py);
                    kw.set_item("ssh_config", ssh_config)?;
                    kw.set_item("known_hosts", known_hosts)?;
                    kw.set_item("host_key_policy", host_key_policy)?;
                    kw.set_item("connect_timeout", connect_timeout)?;
                    kw.set_item("keepalive", keepalive)?;
                    let cls = py.get_type::<PyCluster>();
                    let obj = cls.call_method("from_config", (&config,), Some(&kw))?;
                    obj.cast_into::<PyCluster>()?.unbind()
                }
            };
            let owner = match owner {
                Some(o) => o,
                None => py.import("getpass")?.call_method0("getuser")?.extract()?,
            };
            let opts = LifecycleOptions {
                pull,
                start_timeout: to_duration(py, "start_timeout", Some(start_timeout))?
                    .unwrap_or(Duration::from_secs(900)),
                provision_timeout: to_duration(py, "provision_timeout", Some(provision_timeout))?
                    .unwrap_or(Duration::from_secs(1800)),
                sshd_port,
                recreate,
                run_id: run_id.unwrap_or_else(default_run_id),
                owner,
                inline_provision,
                lock,
                ..LifecycleOptions::default()
            };
            let inner = cluster.get().inner.clone();
            let driver = Driver::new(inner, spec, script, opts).py_err(py)?;
            Ok(PyContainerLifecycle {
                driver: Arc::new(driver),
                cluster,
            })
        })
    }

    /// The `cvs.config-hash` label this configuration gives its containers.
    #[getter]
    fn config_hash(&self) -> &str {
        self.driver.config_hash()
    }

    /// `cvs.run-id` of the containers this object creates (cleanup removes only those).
    #[getter]
    fn run_id(&self) -> &str {
        self.driver.run_id()
    }

    /// The `Cluster` the driver runs on (share it for host-level commands).
    #[getter]
    fn cluster(&self, py: Python<'_>) -> Py<PyCluster> {
        self.cluster.clone_ref(py)
    }

    /// What `setup()` would do on each host and why; changes nothing.
    #[pyo3(signature = (*, progress = None))]
    fn plan(
        &self,
        py: Python<'_>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyLifecycleReport> {
        self.call(py, progress, Op::Plan)
    }

    /// Launch, start or attach per the lifetime; provision fresh containers.
    #[pyo3(signature = (*, progress = None))]
    fn setup(
        &self,
        py: Python<'_>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyLifecycleReport> {
        self.call(py, progress, Op::Setup)
    }

    /// Start the in-container sshd where it is not running and prove it answers.
    #[pyo3(signature = (*, progress = None))]
    fn setup_sshd(
        &self,
        py: Python<'_>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyLifecycleReport> {
        self.call(py, progress, Op::SetupSshd)
    }

    /// Remove per_run containers (persistent and no_launch are kept); `orphans` also removes
    /// this owner's per_run containers left by crashed runs.
    #[pyo3(signature = (*, orphans = false, progress = None))]
    fn teardown(
        &self,
        py: Python<'_>,
        orphans: bool,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyLifecycleReport> {
        self.call(py, progress, Op::Teardown { orphans })
    }

    /// Per-host state: running, container ID, started-at, images, config hash, sshd.
    #[pyo3(signature = (*, progress = None))]
    fn status(
        &self,
        py: Python<'_>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyLifecycleReport> {
        self.call(py, progress, Op::Status)
    }

    /// Run `cmd` inside the container on every host (or `hosts`) with `bash -c`.
    #[pyo3(signature = (cmd, hosts = None, timeout = None, *, progress = None))]
    fn exec(
        &self,
        py: Python<'_>,
        cmd: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyResults> {
        guard(py, || {
            let (hosts, timeout) = self.exec_call(py, hosts, timeout)?;
            let (cancel_tx, cancel_rx) = watch::channel(false);
            let (ev_tx, ev_rx) = mpsc::unbounded_channel();
            let started = std::time::Instant::now();
            let cx = Ctx {
                events: Some(ev_tx),
                cancel: cancel_rx,
            };
            let fut = self.exec_work(hosts, cmd, timeout, cx);
            let results = wait(py, fut, cancel_tx, ev_rx, progress)?.py_err(py)?;
            let n = results.len();
            Ok(PyResults::new(results, vec![None; n], started.elapsed()))
        })
    }

    /// `await`able `plan`.
    #[pyo3(signature = (*, progress = None))]
    fn plan_async<'py>(
        &self,
        py: Python<'py>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call_async(py, progress, Op::Plan)
    }

    /// `await`able `setup`. Cancelling the await stops the step's remote work and removes what
    /// this run created, as an interrupted `setup()` does (in the background).
    #[pyo3(signature = (*, progress = None))]
    fn setup_async<'py>(
        &self,
        py: Python<'py>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call_async(py, progress, Op::Setup)
    }

    /// `await`able `setup_sshd`.
    #[pyo3(signature = (*, progress = None))]
    fn setup_sshd_async<'py>(
        &self,
        py: Python<'py>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call_async(py, progress, Op::SetupSshd)
    }

    /// `await`able `teardown`.
    #[pyo3(signature = (*, orphans = false, progress = None))]
    fn teardown_async<'py>(
        &self,
        py: Python<'py>,
        orphans: bool,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call_async(py, progress, Op::Teardown { orphans })
    }

    /// `await`able `status`.
    #[pyo3(signature = (*, progress = None))]
    fn status_async<'py>(
        &self,
        py: Python<'py>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.call_async(py, progress, Op::Status)
    }

    /// `await`able `exec`: the same `Results`; cancelling the await kills the commands.
    #[pyo3(signature = (cmd, hosts = None, timeout = None, *, progress = None))]
    fn exec_async<'py>(
        &self,
        py: Python<'py>,
        cmd: String,
        hosts: Option<Vec<String>>,
        timeout: Option<f64>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (hosts, timeout) = match guard(py, || self.exec_call(py, hosts, timeout)) {
            Ok(v) => v,
            Err(e) => return aio::failed(py, e),
        };
        guard(py, || {
            let started = std::time::Instant::now();
            aio::spawn(
                py,
                progress,
                &self.cluster.get().calls,
                CANCEL_GRACE,
                |events, cancel| {
                    let work = self.exec_work(hosts, cmd, timeout, Ctx { events, cancel });
                    async move { (work.await, started.elapsed()) }
                },
                Box::new(
                    |py, (results, elapsed): (crate::error::Result<Vec<HostResult>>, Duration)| {
                        let results = results.py_err(py)?;
                        let n = results.len();
                        Ok(
                            Py::new(py, PyResults::new(results, vec![None; n], elapsed))?
                                .into_any(),
                        )
                    },
                ),
                Box::new(|_| None),
            )
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "ContainerLifecycle(config_hash={:?})",
            self.driver.config_hash()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyContainerLifecycle>()?;
    m.add_class::<PyLifecycleReport>()?;
    m.add_class::<PyHostReport>()?;
    Ok(())
}
