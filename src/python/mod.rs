//! The pyo3 layer: the only code that imports pyo3. Inputs are converted to owned Rust values
//! first, errors map through one conversion (`errors::to_pyerr`), and every entry point runs
//! under `errors::guard` so no panic crosses into Python as a `BaseException`.

mod aio;
mod config;
mod convert;
mod driver;
mod env;
mod errors;
mod lifecycle;
mod render;
mod ssh;
mod transport;

use pyo3::prelude::*;

/// Raise a Rust panic inside a guarded call, so tests can prove panics surface as
/// `cvs_core.InternalError`. Not part of the API.
#[pyfunction]
fn _debug_panic(py: Python<'_>) -> PyResult<()> {
    errors::guard(py, || -> PyResult<()> {
        panic!("deliberate panic for the boundary test")
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // The one source of the version: Cargo.toml, which maturin also writes into the wheel's
    // metadata, so `cvs_core.__version__`, `cvs-core --version` and pip agree.
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let c = errors::classes(py)?;
    m.add("CvsError", c.cvs_error.bind(py))?;
    m.add("ConfigError", c.config_error.bind(py))?;
    m.add(
        "UnresolvedPlaceholderError",
        c.unresolved_placeholder_error.bind(py),
    )?;
    m.add("ScriptTooLargeError", c.script_too_large_error.bind(py))?;
    m.add("InternalError", c.internal_error.bind(py))?;
    m.add("TransferError", c.transfer_error.bind(py))?;

    m.add_class::<config::PyClusterConfig>()?;
    m.add_class::<config::PyContainerSpec>()?;
    m.add_function(wrap_pyfunction!(config::load_config, m)?)?;
    m.add_function(wrap_pyfunction!(config::resolve_container_lifetime, m)?)?;
    m.add_function(wrap_pyfunction!(config::resolve_container_setup_script, m)?)?;
    m.add_function(wrap_pyfunction!(config::resolve_cluster_placeholders, m)?)?;
    m.add_function(wrap_pyfunction!(config::placeholder_user, m)?)?;
    m.add_function(wrap_pyfunction!(config::validate_container_name, m)?)?;
    m.add_function(wrap_pyfunction!(config::sanitize_container_name, m)?)?;
    m.add_function(wrap_pyfunction!(config::default_container_name, m)?)?;
    config::add_constants(m)?;

    m.add_class::<lifecycle::PySetupDecision>()?;
    m.add_function(wrap_pyfunction!(lifecycle::decide_setup, m)?)?;
    m.add_function(wrap_pyfunction!(lifecycle::decide_teardown, m)?)?;
    m.add_function(wrap_pyfunction!(lifecycle::hosts_needing_sshd, m)?)?;
    m.add_function(wrap_pyfunction!(lifecycle::parse_running_probe, m)?)?;
    m.add_function(wrap_pyfunction!(lifecycle::parse_image_probe, m)?)?;

    render::register(m)?;
    ssh::register(m)?;
    m.add_function(wrap_pyfunction!(transport::effective_transport, m)?)?;
    driver::register(m)?;
    m.add_function(wrap_pyfunction!(_debug_panic, m)?)?;
    aio::init();
    m.add_function(wrap_pyfunction!(aio::_settle_cancelled, m)?)?;
    py.import("atexit")?
        .call_method1("register", (m.getattr("_settle_cancelled")?,))?;
    Ok(())
}
