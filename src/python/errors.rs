//! The Python exception hierarchy and the one `Error -> PyErr` conversion.
//!
//! `ConfigError` must also be a `ValueError` (CVS catches `ValueError` around config loading),
//! which needs multiple inheritance; pyo3's exception macros take a single base, so the classes
//! are built once with Python's own `type()` and kept for the life of the interpreter.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};

use crate::error::Error;

pub struct Classes {
    pub cvs_error: Py<PyType>,
    pub config_error: Py<PyType>,
    pub unresolved_placeholder_error: Py<PyType>,
    pub script_too_large_error: Py<PyType>,
    pub internal_error: Py<PyType>,
    pub transfer_error: Py<PyType>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn make_class<'py>(
    py: Python<'py>,
    name: &str,
    doc: &str,
    bases: Vec<Bound<'py, PyAny>>,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__doc__", doc)?;
    ns.set_item("__module__", "cvs_core")?;
    let bases = PyTuple::new(py, bases)?;
    let cls = py
        .import("builtins")?
        .getattr("type")?
        .call1((name, bases, ns))?;
    Ok(cls.cast_into::<PyType>()?.unbind())
}

pub fn classes(py: Python<'_>) -> PyResult<&Classes> {
    CLASSES.get_or_try_init(py, || {
        let exc = py.get_type::<PyException>().into_any();
        let value_error = py.get_type::<PyValueError>().into_any();
        let cvs_error = make_class(
            py,
            "CvsError",
            "Root of every error cvs_core raises.",
            vec![exc],
        )?;
        let config_error = make_class(
            py,
            "ConfigError",
            "The configuration is invalid. `.issues` lists (path, message) pairs; `.path` is the \
             first offending path.",
            vec![cvs_error.bind(py).clone().into_any(), value_error.clone()],
        )?;
        let unresolved = make_class(
            py,
            "UnresolvedPlaceholderError",
            "A <changeme> marker is left in the cluster configuration; `.path` names it.",
            vec![config_error.bind(py).clone().into_any()],
        )?;
        let too_large = make_class(
            py,
            "ScriptTooLargeError",
            "A setup script exceeds the inline delivery limit; `.size` and `.limit` are bytes.",
            vec![cvs_error.bind(py).clone().into_any(), value_error],
        )?;
        let internal = make_class(
            py,
            "InternalError",
            "A bug in cvs_core (a Rust panic caught at the boundary). Please report it.",
            vec![cvs_error.bind(py).clone().into_any()],
        )?;
        let transfer = make_class(
            py,
            "TransferError",
            "A file transfer failed on some hosts; `.results` holds every host's outcome and \
             `.paths` the files that did arrive.",
            vec![cvs_error.bind(py).clone().into_any()],
        )?;
        Ok(Classes {
            cvs_error,
            config_error,
            unresolved_placeholder_error: unresolved,
            script_too_large_error: too_large,
            internal_error: internal,
            transfer_error: transfer,
        })
    })
}

fn raise<'py>(py: Python<'py>, cls: &Py<PyType>, message: String) -> PyResult<Bound<'py, PyAny>> {
    cls.bind(py).call1((message,))
}

/// Build the Python exception for a core error, with its structured fields as attributes.
pub fn to_pyerr(py: Python<'_>, err: Error) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let c = classes(py)?;
        let message = err.to_string();
        let value = match &err {
            Error::Config(issues) => {
                let v = raise(py, &c.config_error, message)?;
                let pairs = PyList::empty(py);
                for i in issues {
                    pairs.append((i.path.as_str(), i.message.as_str()))?;
                }
                v.setattr("issues", pairs)?;
                v.setattr("path", issues.first().map(|i| i.path.as_str()))?;
                v
            }
            Error::UnresolvedPlaceholder { path, value } => {
                let v = raise(py, &c.unresolved_placeholder_error, message.clone())?;
                v.setattr("issues", vec![(path.as_str(), message.as_str())])?;
                v.setattr("path", path.as_str())?;
                v.setattr("value", value.as_str())?;
                v
            }
            Error::ScriptTooLarge { size, limit, .. } => {
                let v = raise(py, &c.script_too_large_error, message)?;
                v.setattr("size", *size)?;
                v.setattr("limit", *limit)?;
                v
            }
            _ => raise(py, &c.cvs_error, message)?,
        };
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

pub trait IntoPyResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, e))
    }
}

/// Run a binding body so that a Rust panic becomes `cvs_core.InternalError` (an `Exception`)
/// instead of pyo3's `PanicException`, which derives from `BaseException` and would escape
/// CVS's `except Exception` handlers.
pub fn guard<T>(py: Python<'_>, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            let c = classes(py)?;
            let value = raise(
                py,
                &c.internal_error,
                format!("internal error in cvs_core: {detail}"),
            )?;
            Err(PyErr::from_value(value))
        }
    }
}
