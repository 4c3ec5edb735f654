//! `decide_setup`, `decide_teardown`, `hosts_needing_sshd` and the probe parsers.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyInt};

use super::errors::{IntoPyResult, guard};
use crate::config::Lifetime;
use crate::lifecycle::{self, ImageState, ProbeState, SetupInput};

/// The outcome of the container-lifetime state machine for one `setup` (immutable).
#[pyclass(frozen, module = "cvs_core", name = "SetupDecision")]
pub struct PySetupDecision {
    inner: lifecycle::SetupDecision,
}

#[pymethods]
impl PySetupDecision {
    /// One of verify_ok, verify_failed, launch, attach, refuse_partial, refuse_probe_failed,
    /// refuse_image_skew, refuse_unreadable_sha, need_image_status.
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind.as_str()
    }
    /// True when setup may go ahead (verify_ok, launch, attach).
    #[getter]
    fn proceeds(&self) -> bool {
        self.inner.kind.proceeds()
    }
    #[getter]
    fn running_hosts(&self) -> Vec<String> {
        self.inner.running_hosts.clone()
    }
    #[getter]
    fn missing_hosts(&self) -> Vec<String> {
        self.inner.missing_hosts.clone()
    }
    #[getter]
    fn failed_hosts(&self) -> Vec<String> {
        self.inner.failed_hosts.clone()
    }
    #[getter]
    fn stale_hosts(&self) -> Vec<String> {
        self.inner.stale_hosts.clone()
    }
    #[getter]
    fn message(&self) -> &str {
        &self.inner.message
    }
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }
    fn __repr__(&self) -> String {
        format!(
            "SetupDecision(kind={:?}, message={:?})",
            self.inner.kind.as_str(),
            self.inner.message
        )
    }
}

fn lifetime(py: Python<'_>, value: &str) -> PyResult<Lifetime> {
    Lifetime::parse(value).py_err(py)
}

fn field<'py>(
    entry: &Bound<'py, PyAny>,
    key: &str,
    host: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let dict = entry.cast::<PyDict>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "probe result for host {host:?} must be a dict"
        ))
    })?;
    dict.get_item(key)
}

fn probe_table(running: &Bound<'_, PyDict>) -> PyResult<Vec<(String, ProbeState)>> {
    let mut out = Vec::with_capacity(running.len());
    for (host, entry) in running.iter() {
        let host: String = host.extract()?;
        let exit_code = match field(&entry, "exit_code", &host)? {
            Some(v) if !v.is_none() => v.extract::<i64>()?,
            _ => -1,
        };
        let running = match field(&entry, "running", &host)? {
            Some(v) => v.is_truthy()?,
            None => false,
        };
        let name = match field(&entry, "name", &host)? {
            Some(v) if !v.is_none() => v.extract::<String>()?,
            _ => String::new(),
        };
        out.push((
            host,
            ProbeState {
                running,
                exit_code,
                name,
            },
        ));
    }
    Ok(out)
}

fn image_table(status: &Bound<'_, PyDict>) -> PyResult<Vec<(String, ImageState)>> {
    let mut out = Vec::with_capacity(status.len());
    for (host, entry) in status.iter() {
        let host: String = host.extract()?;
        let get = |key: &str| -> PyResult<String> {
            Ok(match field(&entry, key, &host)? {
                Some(v) if !v.is_none() => v.extract::<String>()?,
                _ => String::new(),
            })
        };
        out.push((
            host.clone(),
            ImageState {
                container_sha: get("container_sha")?,
                image_sha: get("image_sha")?,
            },
        ));
    }
    Ok(out)
}

/// Decide what `setup` does for `lifetime` given CVS's probe shapes:
/// `running = {host: {"running", "exit_code", "name"}}`,
/// `image_status = {host: {"container_sha", "image_sha"}}`.
#[pyfunction]
#[pyo3(signature = (lifetime, running, image_status = None, *, hosts = None, name = "", image = ""))]
pub fn decide_setup(
    py: Python<'_>,
    lifetime: &str,
    running: &Bound<'_, PyDict>,
    image_status: Option<&Bound<'_, PyDict>>,
    hosts: Option<Vec<String>>,
    name: &str,
    image: &str,
) -> PyResult<PySetupDecision> {
    guard(py, || {
        let lifetime = self::lifetime(py, lifetime)?;
        let running = probe_table(running)?;
        let images = image_status.map(image_table).transpose()?;
        let input = SetupInput {
            lifetime,
            running: &running,
            image_status: images.as_deref(),
            hosts: hosts.as_deref(),
            container_name: name,
            image,
        };
        let inner = lifecycle::decide_setup(&input).py_err(py)?;
        Ok(PySetupDecision { inner })
    })
}

/// Whether teardown removes the container: only per_run with a container id.
#[pyfunction]
#[pyo3(signature = (lifetime, container_id))]
pub fn decide_teardown(
    py: Python<'_>,
    lifetime: &str,
    container_id: Option<&str>,
) -> PyResult<bool> {
    guard(py, || {
        Ok(lifecycle::decide_teardown(
            self::lifetime(py, lifetime)?,
            container_id,
        ))
    })
}

/// Hosts whose sshd precheck failed: `precheck` is `{host: exit_code}` or CVS's detailed
/// `{host: {"output", "exit_code"}}`.
#[pyfunction]
pub fn hosts_needing_sshd(py: Python<'_>, precheck: &Bound<'_, PyDict>) -> PyResult<Vec<String>> {
    guard(py, || {
        let mut table = Vec::with_capacity(precheck.len());
        for (host, entry) in precheck.iter() {
            let host: String = host.extract()?;
            let code = if entry.is_instance_of::<PyInt>() {
                entry.extract::<i64>()?
            } else {
                match field(&entry, "exit_code", &host)? {
                    Some(v) if !v.is_none() => v.extract::<i64>()?,
                    _ => -1,
                }
            };
            table.push((host, code));
        }
        Ok(lifecycle::hosts_needing_sshd(&table))
    })
}

/// Turn CVS-style detailed results `{host: {"output", "exit_code"}}` of `is_running_command`
/// into the `running` shape `decide_setup` takes.
#[pyfunction]
pub fn parse_running_probe<'py>(
    py: Python<'py>,
    name: &str,
    results: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    guard(py, || {
        let out = PyDict::new(py);
        for (host, entry) in results.iter() {
            let host: String = host.extract()?;
            let (output, code) = output_and_code(&entry, &host)?;
            let state = lifecycle::parse_is_running(name, &output, code);
            let d = PyDict::new(py);
            d.set_item("exit_code", state.exit_code)?;
            d.set_item("running", state.running)?;
            d.set_item("name", state.name)?;
            out.set_item(host, d)?;
        }
        Ok(out)
    })
}

/// Turn detailed results of `image_sha_status_command` into `{host: {"container_sha",
/// "image_sha"}}`.
#[pyfunction]
pub fn parse_image_probe<'py>(
    py: Python<'py>,
    results: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyDict>> {
    guard(py, || {
        let out = PyDict::new(py);
        for (host, entry) in results.iter() {
            let host: String = host.extract()?;
            let (output, _) = output_and_code(&entry, &host)?;
            let state = lifecycle::parse_image_sha(&output);
            let d = PyDict::new(py);
            d.set_item("container_sha", state.container_sha)?;
            d.set_item("image_sha", state.image_sha)?;
            out.set_item(host, d)?;
        }
        Ok(out)
    })
}

/// A result entry is either CVS's detailed dict or a plain output string (exit code 0).
fn output_and_code(entry: &Bound<'_, PyAny>, host: &str) -> PyResult<(String, i64)> {
    if let Ok(text) = entry.extract::<String>() {
        return Ok((text, 0));
    }
    let output = match field(entry, "output", host)? {
        Some(v) if !v.is_none() => v.extract::<String>()?,
        _ => String::new(),
    };
    let code = match field(entry, "exit_code", host)? {
        Some(v) if !v.is_none() => v.extract::<i64>()?,
        _ => -1,
    };
    Ok((output, code))
}
