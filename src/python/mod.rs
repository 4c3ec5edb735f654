//! pyo3 bindings (the only pyo3 code).
