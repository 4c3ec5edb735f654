//! `ClusterConfig`, `ContainerSpec` and the config functions.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use serde_json::{Map, Value};

use super::convert::{map_to_py, to_py, to_value};
use super::env::PyEnv;
use super::errors::{IntoPyResult, guard};
use crate::config::{
    self, ClusterConfig, ContainerSpec, Env, Kind, LoadOptions, MissingKey, ParsedDocument,
};
use crate::error::{Error, Issue};
use crate::ssh::local::read_config_file;

/// A dict is taken as is; a str or os.PathLike names a JSON file (whose duplicated keys come
/// back as issues).
fn document(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<ParsedDocument> {
    if obj.is_instance_of::<PyDict>() {
        return Ok(ParsedDocument {
            value: to_value(obj, "").py_err(py)?,
            issues: Vec::new(),
        });
    }
    let fspath = py.import("os")?.getattr("fspath")?;
    let Ok(path) = fspath.call1((obj,)).and_then(|p| p.extract::<String>()) else {
        return Err(Error::config(Issue::verbatim(
            "",
            format!("the {what} configuration must be a dict or a JSON file path"),
        )))
        .py_err(py);
    };
    let text = read_config_file(&path).py_err(py)?;
    config::parse_json_document(&text, &path).py_err(py)
}

fn env_pairs<'py>(py: Python<'py>, pairs: &[(String, String)]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in pairs {
        d.set_item(k, v)?;
    }
    Ok(d)
}

/// A validated, resolved `container` block (immutable).
#[pyclass(frozen, module = "cvs_core", name = "ContainerSpec")]
pub struct PyContainerSpec {
    pub inner: ContainerSpec,
    pub warnings: Vec<Issue>,
}

#[pymethods]
impl PyContainerSpec {
    /// Resolve and validate a `container` block dict on its own (the caller's dict is not
    /// changed).
    #[staticmethod]
    #[pyo3(signature = (block, *, require_image = true))]
    fn from_dict(py: Python<'_>, block: &Bound<'_, PyAny>, require_image: bool) -> PyResult<Self> {
        guard(py, || {
            let value = to_value(block, "container").py_err(py)?;
            let env = PyEnv { py };
            let default = env.default_setup_script()?;
            let (inner, warnings) =
                config::container_spec_from_block(&value, &env, &default, require_image)
                    .py_err(py)?;
            Ok(PyContainerSpec { inner, warnings })
        })
    }

    #[getter]
    fn lifetime(&self) -> &'static str {
        self.inner.lifetime.as_str()
    }
    #[getter]
    fn image(&self) -> Option<&str> {
        self.inner.image.as_deref()
    }
    #[getter]
    fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }
    #[getter]
    fn setup_script(&self) -> &str {
        &self.inner.setup_script
    }
    #[getter]
    fn image_tar(&self) -> Option<&str> {
        self.inner.image_tar.as_deref()
    }
    #[getter]
    fn runtime(&self) -> &str {
        &self.inner.runtime
    }
    /// False when `container.runtime.defaults` is false: CVS's default run arguments are off.
    #[getter]
    fn use_defaults(&self) -> bool {
        self.inner.use_defaults
    }
    #[getter]
    fn volumes(&self) -> Vec<String> {
        self.inner.run_args.volumes.clone()
    }
    #[getter]
    fn devices(&self) -> Vec<String> {
        self.inner.run_args.devices.clone()
    }
    #[getter]
    fn capabilities(&self) -> Vec<String> {
        self.inner.run_args.capabilities.clone()
    }
    #[getter]
    fn security_opts(&self) -> Vec<String> {
        self.inner.run_args.security_opts.clone()
    }
    #[getter]
    fn groups(&self) -> Vec<String> {
        self.inner.run_args.groups.clone()
    }
    #[getter]
    fn ulimits(&self) -> Vec<String> {
        self.inner.run_args.ulimits.clone()
    }
    #[getter]
    fn environment<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        env_pairs(py, &self.inner.run_args.environment)
    }
    #[getter]
    fn network(&self) -> Option<&str> {
        self.inner.run_args.network.as_deref()
    }
    #[getter]
    fn ipc(&self) -> Option<&str> {
        self.inner.run_args.ipc.as_deref()
    }
    #[getter]
    fn privileged(&self) -> bool {
        self.inner.run_args.privileged
    }
    /// Non-fatal findings as "path: message" strings.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.warnings.iter().map(|i| i.message.clone()).collect()
    }
    /// The merged run arguments as a dict (CVS's getter names).
    #[getter]
    fn run_args<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let a = &self.inner.run_args;
        let d = PyDict::new(py);
        d.set_item("volumes", a.volumes.clone())?;
        d.set_item("devices", a.devices.clone())?;
        d.set_item("capabilities", a.capabilities.clone())?;
        d.set_item("security_opts", a.security_opts.clone())?;
        d.set_item("groups", a.groups.clone())?;
        d.set_item("ulimits", a.ulimits.clone())?;
        d.set_item("environment", env_pairs(py, &a.environment)?)?;
        d.set_item("network", a.network.clone())?;
        d.set_item("ipc", a.ipc.clone())?;
        d.set_item("privileged", a.privileged)?;
        Ok(d)
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("lifetime", self.lifetime())?;
        d.set_item("image", self.image())?;
        d.set_item("name", self.name())?;
        d.set_item("setup_script", self.setup_script())?;
        d.set_item("image_tar", self.image_tar())?;
        d.set_item("runtime", self.runtime())?;
        d.set_item("use_defaults", self.use_defaults())?;
        d.set_item("run_args", self.run_args(py)?)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "ContainerSpec(lifetime={:?}, image={:?}, name={:?})",
            self.inner.lifetime.as_str(),
            self.inner.image,
            self.inner.name
        )
    }
}

/// The resolved cluster + testsuite configuration (immutable).
#[pyclass(frozen, module = "cvs_core", name = "ClusterConfig")]
pub struct PyClusterConfig {
    inner: ClusterConfig,
    container: Option<Py<PyContainerSpec>>,
}

impl PyClusterConfig {
    pub fn container_spec(&self) -> Option<ContainerSpec> {
        self.inner.container.clone()
    }
    pub fn username_str(&self) -> &str {
        &self.inner.username
    }
    pub fn key_str(&self) -> &str {
        &self.inner.priv_key_file
    }
    pub fn password_str(&self) -> Option<&str> {
        self.inner.password.as_deref()
    }
    pub fn host_list(&self) -> Vec<String> {
        self.inner.hosts.clone()
    }
    pub fn effective_kind(&self) -> Kind {
        self.inner.effective_transport
    }
    pub fn slurm_pairs(&self) -> Vec<(&'static str, &str)> {
        self.inner.slurm.pairs()
    }
    pub fn persist_duration(&self) -> Option<std::time::Duration> {
        self.inner.persist
    }
}

#[pymethods]
impl PyClusterConfig {
    #[getter]
    fn orchestrator(&self) -> &str {
        &self.inner.orchestrator
    }
    #[getter]
    fn hosts(&self) -> Vec<String> {
        self.inner.hosts.clone()
    }
    #[getter]
    fn head_node(&self) -> &str {
        &self.inner.head_node
    }
    #[getter]
    fn username(&self) -> &str {
        &self.inner.username
    }
    #[getter]
    fn priv_key_file(&self) -> &str {
        &self.inner.priv_key_file
    }
    #[getter]
    fn password(&self) -> Option<&str> {
        self.inner.password.as_deref()
    }
    #[getter]
    fn head_node_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        map_to_py(py, &self.inner.head_node_dict)
    }
    #[getter]
    fn node_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(
            py,
            self.inner.resolved.get("node_dict").unwrap_or(&Value::Null),
        )
    }
    #[getter]
    fn env_vars<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        env_pairs(py, &self.inner.env_vars)
    }
    /// The file's `transport` (`"ssh"`, `"slurm"` or `"auto"`), `None` when it has none.
    #[getter]
    fn transport(&self) -> Option<&str> {
        self.inner.transport.as_deref()
    }
    /// The file's `persist` in seconds (how long each host's SSH master outlives the process),
    /// `None` when the file leaves masters to end with the process.
    #[getter]
    fn persist(&self) -> Option<f64> {
        self.inner.persist.map(|d| d.as_secs_f64())
    }
    /// The file's `slurm` block: the keys it sets (`job_id` and `time` as strings).
    #[getter]
    fn slurm<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.slurm.pairs() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
    /// `"ssh"` or `"slurm"`: the engine `Cluster.from_config` uses, resolved when the
    /// configuration was loaded (the `transport` argument, else `CVS_CORE_TRANSPORT`, else the
    /// file's `transport`, else ssh; `auto` is slurm inside an allocation).
    #[getter]
    fn effective_transport(&self) -> &'static str {
        self.inner.effective_transport.as_str()
    }
    #[getter]
    fn container(&self, py: Python<'_>) -> Option<Py<PyContainerSpec>> {
        self.container.as_ref().map(|c| c.clone_ref(py))
    }
    /// Non-fatal findings as "path: message" strings.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner
            .warnings
            .iter()
            .map(|i| i.message.clone())
            .collect()
    }
    /// The resolved configuration in the cluster file's own shape: placeholders substituted,
    /// `_` keys dropped, `container.lifetime` and `container.setup_script` filled in.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        map_to_py(py, &self.inner.resolved)
    }

    fn __repr__(&self) -> String {
        format!(
            "ClusterConfig(orchestrator={:?}, hosts={} , head_node={:?}, container={})",
            self.inner.orchestrator,
            self.inner.hosts.len(),
            self.inner.head_node,
            self.inner
                .container
                .as_ref()
                .map(|c| format!("{:?}", c.name.as_deref().unwrap_or("?")))
                .unwrap_or_else(|| "None".into())
        )
        .replace("= ,", "=,")
        .replace(" ,", ",")
    }
}

/// Load, resolve and validate a cluster file (and an optional testsuite file).
/// `require_key_file=False` makes a missing `priv_key_file` a warning instead of an error (for
/// checking a file away from the control host); a key file that exists is checked either way.
/// `transport` (`"ssh"`, `"slurm"`, `"auto"`) overrides `CVS_CORE_TRANSPORT` and the file's
/// `transport`; when the result is Slurm, `priv_key_file` is neither required nor checked.
#[pyfunction]
#[pyo3(signature = (cluster, testsuite = None, *, require_key_file = true, transport = None))]
pub fn load_config(
    py: Python<'_>,
    cluster: &Bound<'_, PyAny>,
    testsuite: Option<&Bound<'_, PyAny>>,
    require_key_file: bool,
    transport: Option<String>,
) -> PyResult<PyClusterConfig> {
    guard(py, || {
        let cluster = document(py, cluster, "cluster")?;
        let testsuite = match testsuite {
            Some(t) if !t.is_none() => Some(document(py, t, "testsuite")?),
            _ => None,
        };
        let env = PyEnv { py };
        let default = env.default_setup_script()?;
        let mut text_issues = cluster.issues;
        let testsuite = testsuite.map(|t| {
            text_issues.extend(t.issues);
            t.value
        });
        let options = LoadOptions {
            missing_key: if require_key_file {
                MissingKey::Error
            } else {
                MissingKey::Warn
            },
            text_issues,
            transport,
        };
        let inner =
            config::load_config(&cluster.value, testsuite.as_ref(), &env, &default, &options)
                .py_err(py)?;
        let container = match &inner.container {
            Some(spec) => Some(Py::new(
                py,
                PyContainerSpec {
                    inner: spec.clone(),
                    warnings: Vec::new(),
                },
            )?),
            None => None,
        };
        Ok(PyClusterConfig { inner, container })
    })
}

fn container_map(py: Python<'_>, container: &Bound<'_, PyAny>) -> PyResult<Map<String, Value>> {
    match to_value(container, "container").py_err(py)? {
        Value::Object(m) => Ok(m),
        other => Err(Error::config(Issue::at(
            "container",
            format!(
                "expected a dict, got {}",
                config::pyrepr::value_repr(&other)
            ),
        )))
        .py_err(py),
    }
}

/// CVS's `_resolve_container_lifetime`: mutates and returns `container`; a falsy block is
/// returned untouched.
#[pyfunction]
pub fn resolve_container_lifetime<'py>(
    py: Python<'py>,
    container: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        if !container.is_truthy()? {
            return Ok(container);
        }
        let map = container_map(py, &container)?;
        let lifetime = config::resolve_lifetime(&map).py_err(py)?;
        if !map.contains_key("lifetime") {
            container.set_item("lifetime", lifetime.as_str())?;
        }
        Ok(container)
    })
}

/// CVS's `_resolve_container_setup_script`: mutates and returns `container`; a falsy block is
/// returned untouched. `default_script` overrides the packaged default.
#[pyfunction]
#[pyo3(signature = (container, *, default_script = None))]
pub fn resolve_container_setup_script<'py>(
    py: Python<'py>,
    container: Bound<'py, PyAny>,
    default_script: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        if !container.is_truthy()? {
            return Ok(container);
        }
        let map = container_map(py, &container)?;
        let env = PyEnv { py };
        let default = match default_script {
            Some(d) => d,
            None => env.default_setup_script()?,
        };
        let resolved = config::resolve_setup_script(&map, &default, &env).py_err(py)?;
        container.set_item("setup_script", resolved)?;
        Ok(container)
    })
}

/// CVS's `resolve_cluster_config_placeholders`: a new dict with `{user-id}` substituted in keys
/// and values; `<changeme>` raises `UnresolvedPlaceholderError`. With `strip_comments`, `_` keys
/// are dropped first (as `load_config` does).
#[pyfunction]
#[pyo3(signature = (cluster, *, strip_comments = false))]
pub fn resolve_cluster_placeholders<'py>(
    py: Python<'py>,
    cluster: &Bound<'py, PyAny>,
    strip_comments: bool,
) -> PyResult<Bound<'py, PyAny>> {
    guard(py, || {
        let mut value = to_value(cluster, "").py_err(py)?;
        if strip_comments {
            value = config::strip_comment_keys(&value);
        }
        let user = config::placeholder_user(&PyEnv { py });
        let resolved = config::resolve_cluster_placeholders(&value, &user).py_err(py)?;
        to_py(py, &resolved)
    })
}

/// The user `{user-id}` stands for: `$USER`, `$LOGNAME`, `$USERNAME`, else `root`.
#[pyfunction]
pub fn placeholder_user(py: Python<'_>) -> String {
    config::placeholder_user(&PyEnv { py })
}

/// Raise `ConfigError` unless `name` matches Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
#[pyfunction]
pub fn validate_container_name(py: Python<'_>, name: &str) -> PyResult<()> {
    if config::is_valid_container_name(name) {
        return Ok(());
    }
    let message = config::validate_container_name(name)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    Err(Error::config(Issue::verbatim("container.name", message))).py_err(py)
}

/// CVS's `sanitize_container_name`: non `[a-zA-Z0-9_]` characters become `_`.
#[pyfunction]
pub fn sanitize_container_name(image: &str) -> String {
    config::sanitize_container_name(image)
}

/// CVS's default container name: `<user>_<sanitized image>`, user = `getpass.getuser()`.
#[pyfunction]
#[pyo3(signature = (image, user = None))]
pub fn default_container_name(py: Python<'_>, image: &str, user: Option<String>) -> String {
    let user = user.unwrap_or_else(|| PyEnv { py }.control_user());
    config::default_container_name(&user, image)
}

pub fn add_constants(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add(
        "VALID_CONTAINER_LIFETIMES",
        pyo3::types::PyTuple::new(py, config::VALID_CONTAINER_LIFETIMES)?,
    )?;
    m.add(
        "MAX_INLINE_SETUP_SCRIPT_BYTES",
        config::MAX_INLINE_SETUP_SCRIPT_BYTES,
    )?;
    // CVS's DEFAULT_CONTAINER_ARGS, as a fresh dict in CVS's own shape.
    let d = PyDict::new(py);
    d.set_item("devices", PyList::new(py, config::DEFAULT_DEVICES)?)?;
    d.set_item(
        "capabilities",
        PyList::new(py, config::DEFAULT_CAPABILITIES)?,
    )?;
    d.set_item(
        "security_opts",
        PyList::new(py, config::DEFAULT_SECURITY_OPTS)?,
    )?;
    d.set_item("groups", PyList::new(py, config::DEFAULT_GROUPS)?)?;
    d.set_item("ulimits", PyList::new(py, config::DEFAULT_ULIMITS)?)?;
    let envd = PyDict::new(py);
    for (k, v) in config::DEFAULT_ENVIRONMENT {
        envd.set_item(k, v)?;
    }
    d.set_item("environment", envd)?;
    d.set_item("network_mode", PyString::new(py, config::DEFAULT_NETWORK))?;
    d.set_item("ipc_mode", PyString::new(py, config::DEFAULT_IPC))?;
    d.set_item("privileged", true)?;
    m.add("DEFAULT_CONTAINER_ARGS", d)?;
    Ok(())
}
