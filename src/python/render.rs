//! Command renderers: each returns the final command string a host shell receives.

use pyo3::prelude::*;

use super::config::PyContainerSpec;
use super::errors::{IntoPyResult, guard};
use crate::render::{self, RunOptions};

/// CVS's in-container sshd port.
pub const DEFAULT_SSHD_PORT: u16 = 2224;
/// CVS's `CONTAINER_START_TIMEOUT_S`: a cold pull of a multi-GB image must fit in `docker run`.
pub const CONTAINER_START_TIMEOUT_S: u32 = 900;

fn run_options(
    prefix: String,
    infiniband_expansion: bool,
    labels: Option<Vec<(String, String)>>,
) -> RunOptions {
    RunOptions {
        prefix,
        infiniband_expansion,
        labels: labels.unwrap_or_default(),
        pull: None,
    }
}

/// The `docker run -d ... <image> sleep infinity` for a spec.
#[pyfunction]
#[pyo3(signature = (spec, *, prefix = "sudo".to_owned(), infiniband_expansion = false, labels = None))]
pub fn docker_run_command(
    py: Python<'_>,
    spec: PyRef<'_, PyContainerSpec>,
    prefix: String,
    infiniband_expansion: bool,
    labels: Option<Vec<(String, String)>>,
) -> PyResult<String> {
    guard(py, || {
        let opts = run_options(prefix, infiniband_expansion, labels);
        render::docker_run_command(&spec.inner, &opts).py_err(py)
    })
}

/// The argv of `docker_run_command` (privilege words first, no shell fragments).
#[pyfunction]
#[pyo3(signature = (spec, *, prefix = "sudo".to_owned(), labels = None))]
pub fn docker_run_argv(
    py: Python<'_>,
    spec: PyRef<'_, PyContainerSpec>,
    prefix: String,
    labels: Option<Vec<(String, String)>>,
) -> PyResult<Vec<String>> {
    guard(py, || {
        let opts = run_options(prefix, false, labels);
        render::docker_run_argv(&spec.inner, &opts).py_err(py)
    })
}

/// `docker exec [-i] <name> bash -c <cmd>`: the command runs in the container's shell.
#[pyfunction]
#[pyo3(signature = (name, cmd, *, prefix = "sudo", interactive = false))]
pub fn docker_exec_command(
    py: Python<'_>,
    name: &str,
    cmd: &str,
    prefix: &str,
    interactive: bool,
) -> PyResult<String> {
    guard(py, || {
        render::docker_exec_command(prefix, name, cmd, interactive).py_err(py)
    })
}

#[pyfunction]
#[pyo3(signature = (name, *, prefix = "sudo"))]
pub fn is_running_command(py: Python<'_>, name: &str, prefix: &str) -> PyResult<String> {
    guard(py, || render::is_running_command(prefix, name).py_err(py))
}

#[pyfunction]
#[pyo3(signature = (name, image, *, prefix = "sudo"))]
pub fn image_sha_status_command(
    py: Python<'_>,
    name: &str,
    image: &str,
    prefix: &str,
) -> PyResult<String> {
    guard(py, || {
        render::image_sha_status_command(prefix, name, image).py_err(py)
    })
}

#[pyfunction]
#[pyo3(signature = (name, *, prefix = "sudo", quiet = false))]
pub fn remove_command(py: Python<'_>, name: &str, prefix: &str, quiet: bool) -> PyResult<String> {
    guard(py, || {
        render::remove_command(prefix, name, quiet).py_err(py)
    })
}

#[pyfunction]
#[pyo3(signature = (image, *, prefix = "sudo"))]
pub fn image_exists_command(py: Python<'_>, image: &str, prefix: &str) -> PyResult<String> {
    guard(py, || {
        render::image_exists_command(prefix, image).py_err(py)
    })
}

#[pyfunction]
#[pyo3(signature = (tar_path, *, prefix = "sudo"))]
pub fn load_image_command(py: Python<'_>, tar_path: &str, prefix: &str) -> PyResult<String> {
    guard(py, || {
        render::load_image_command(prefix, tar_path).py_err(py)
    })
}

#[pyfunction]
#[pyo3(signature = (port = DEFAULT_SSHD_PORT))]
pub fn sshd_precheck_command(port: u16) -> String {
    render::sshd_precheck_command(port)
}

#[pyfunction]
#[pyo3(signature = (port = DEFAULT_SSHD_PORT))]
pub fn sshd_setup_commands(port: u16) -> Vec<String> {
    render::sshd_setup_commands(port)
}

/// CPython `shlex.quote`, byte for byte.
#[pyfunction]
pub fn quote(py: Python<'_>, s: &str) -> PyResult<String> {
    guard(py, || render::quote(s).py_err(py))
}

/// `set -o pipefail; echo <base64> | base64 -d | bash` for a script of at most `limit` bytes
/// (16384 by default).
#[pyfunction]
#[pyo3(signature = (script, *, label = "setup script", limit = None))]
pub fn provision_command(
    py: Python<'_>,
    script: &[u8],
    label: &str,
    limit: Option<usize>,
) -> PyResult<String> {
    guard(py, || match limit {
        Some(limit) => render::provision_command_limited(script, label, limit).py_err(py),
        None => render::provision_command(script, label).py_err(py),
    })
}

/// `docker exec -i <name> bash -c <runner>`: send the script on stdin, any size.
#[pyfunction]
#[pyo3(signature = (name, *, prefix = "sudo"))]
pub fn provision_stdin_command(py: Python<'_>, name: &str, prefix: &str) -> PyResult<String> {
    guard(py, || {
        render::provision_stdin_command(prefix, name).py_err(py)
    })
}

/// Python's `str(v)` for a config value (CVS formats `-e {k}={v}` with f-strings).
fn py_str(v: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(v.str()?.to_string())
}

fn str_list(d: &Bound<'_, pyo3::types::PyDict>, key: &str) -> PyResult<Vec<String>> {
    match d.get_item(key)? {
        Some(v) if v.is_truthy()? => v.try_iter()?.map(|x| py_str(&x?)).collect(),
        _ => Ok(Vec::new()),
    }
}

fn env_pairs(v: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, String)>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(Vec::new());
    };
    if let Ok(d) = v.cast::<pyo3::types::PyDict>() {
        return d
            .iter()
            .map(|(k, v)| Ok((py_str(&k)?, py_str(&v)?)))
            .collect();
    }
    // A list of "K=V" strings.
    v.try_iter()?
        .map(|x| {
            let s = py_str(&x?)?;
            let (k, v) = s.split_once('=').unwrap_or((s.as_str(), ""));
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn runtime_args_of(d: Option<&Bound<'_, pyo3::types::PyDict>>) -> PyResult<render::CvsRuntimeArgs> {
    let Some(d) = d else {
        return Ok(render::CvsRuntimeArgs::default());
    };
    let opt = |key: &str| -> PyResult<Option<String>> {
        match d.get_item(key)? {
            Some(v) if v.is_truthy()? => Ok(Some(py_str(&v)?)),
            _ => Ok(None),
        }
    };
    Ok(render::CvsRuntimeArgs {
        volumes: str_list(d, "volumes")?,
        devices: str_list(d, "devices")?,
        env: env_pairs(d.get_item("env")?.as_ref())?,
        cap_add: str_list(d, "cap_add")?,
        security_opt: str_list(d, "security_opt")?,
        group_add: str_list(d, "group_add")?,
        network: opt("network")?,
        ipc: opt("ipc")?,
        ulimit: str_list(d, "ulimit")?,
        privileged: match d.get_item("privileged")? {
            Some(v) => v.is_truthy()?,
            None => false,
        },
    })
}

/// CVS's `DockerRuntime._build_runtime_args(runtime_args)`: the flags, in CVS's order.
#[pyfunction]
#[pyo3(signature = (runtime_args = None))]
pub fn cvs_runtime_args(
    py: Python<'_>,
    runtime_args: Option<&Bound<'_, pyo3::types::PyDict>>,
) -> PyResult<String> {
    guard(py, || {
        render::cvs_runtime_args(&runtime_args_of(runtime_args)?).py_err(py)
    })
}

/// CVS's `docker run` assembly (`DockerRuntime.setup_containers`), values quoted once; the
/// InfiniBand expansion is rendered as given (CVS's literal, or its guarded form).
#[pyfunction]
#[pyo3(signature = (name, image, *, prefix = "sudo", volumes = None, environment = None,
    runtime_args = None, device_expansion = None))]
#[allow(clippy::too_many_arguments)]
pub fn cvs_docker_run_command(
    py: Python<'_>,
    name: &str,
    image: &str,
    prefix: &str,
    volumes: Option<Vec<String>>,
    environment: Option<&Bound<'_, PyAny>>,
    runtime_args: Option<&Bound<'_, pyo3::types::PyDict>>,
    device_expansion: Option<&str>,
) -> PyResult<String> {
    guard(py, || {
        render::cvs_docker_run_command(
            prefix,
            name,
            image,
            &volumes.unwrap_or_default(),
            &env_pairs(environment)?,
            &runtime_args_of(runtime_args)?,
            device_expansion,
        )
        .py_err(py)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cvs_runtime_args, m)?)?;
    m.add_function(wrap_pyfunction!(cvs_docker_run_command, m)?)?;
    m.add(
        "INFINIBAND_EXPANSION_GUARDED",
        render::INFINIBAND_EXPANSION_GUARDED,
    )?;
    m.add_function(wrap_pyfunction!(docker_run_command, m)?)?;
    m.add_function(wrap_pyfunction!(docker_run_argv, m)?)?;
    m.add_function(wrap_pyfunction!(docker_exec_command, m)?)?;
    m.add_function(wrap_pyfunction!(is_running_command, m)?)?;
    m.add_function(wrap_pyfunction!(image_sha_status_command, m)?)?;
    m.add_function(wrap_pyfunction!(remove_command, m)?)?;
    m.add_function(wrap_pyfunction!(image_exists_command, m)?)?;
    m.add_function(wrap_pyfunction!(load_image_command, m)?)?;
    m.add_function(wrap_pyfunction!(sshd_precheck_command, m)?)?;
    m.add_function(wrap_pyfunction!(sshd_setup_commands, m)?)?;
    m.add_function(wrap_pyfunction!(quote, m)?)?;
    m.add_function(wrap_pyfunction!(provision_command, m)?)?;
    m.add_function(wrap_pyfunction!(provision_stdin_command, m)?)?;
    m.add("INFINIBAND_EXPANSION", render::INFINIBAND_EXPANSION)?;
    m.add("STDIN_RUNNER", render::STDIN_RUNNER)?;
    m.add("DEFAULT_SSHD_PORT", DEFAULT_SSHD_PORT)?;
    m.add("CONTAINER_START_TIMEOUT_S", CONTAINER_START_TIMEOUT_S)?;
    Ok(())
}
