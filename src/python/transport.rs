//! Which transport this process uses, for Python code that must decide before building a
//! cluster (the compat layer skips SSH key resolution on Slurm).

use pyo3::prelude::*;

use super::errors::{IntoPyResult, guard};
use crate::transport::{Kind, TRANSPORT_ENV, resolve_kind};

/// `"ssh"` or `"slurm"`: `configured` (`ssh|slurm|auto`, a cluster file's value), overridden by
/// `CVS_CORE_TRANSPORT`; `auto` is Slurm inside an allocation (`SLURM_JOB_ID` set).
#[pyfunction]
#[pyo3(signature = (configured = None))]
pub fn effective_transport(py: Python<'_>, configured: Option<String>) -> PyResult<&'static str> {
    guard(py, || {
        let env = |k: &str| std::env::var(k).ok();
        let kind = resolve_kind(
            configured.as_deref(),
            env(TRANSPORT_ENV).as_deref(),
            env("SLURM_JOB_ID").as_deref(),
        )
        .py_err(py)?;
        Ok(match kind {
            Kind::Ssh => "ssh",
            Kind::Slurm => "slurm",
        })
    })
}
