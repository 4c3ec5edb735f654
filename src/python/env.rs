//! The control host as Python sees it. Resolution asks Python's own `os`, `os.path` and
//! `getpass`, so paths, users and environment match what CVS computes byte for byte (including
//! changes a test makes with `monkeypatch.setenv` or `os.chdir`).

use pyo3::prelude::*;

use crate::config::{Env, FileInfo, placeholder_user};

pub struct PyEnv<'py> {
    pub py: Python<'py>,
}

impl PyEnv<'_> {
    fn call_str(&self, module: &str, attr: &str, args: Vec<String>) -> Option<String> {
        let m = self.py.import(module).ok()?;
        let f = m.getattr(attr).ok()?;
        let args = pyo3::types::PyTuple::new(self.py, args).ok()?;
        f.call1(args).ok()?.extract::<String>().ok()
    }

    /// The packaged default setup script, as `cvs_core.DEFAULT_CONTAINER_SETUP_SCRIPT` says.
    pub fn default_setup_script(&self) -> PyResult<String> {
        self.py
            .import("cvs_core")?
            .getattr("DEFAULT_CONTAINER_SETUP_SCRIPT")?
            .extract()
    }
}

impl Env for PyEnv<'_> {
    fn var(&self, name: &str) -> Option<String> {
        let environ = self.py.import("os").ok()?.getattr("environ").ok()?;
        environ
            .call_method1("get", (name,))
            .ok()?
            .extract::<Option<String>>()
            .ok()
            .flatten()
    }

    fn control_user(&self) -> String {
        // getpass.getuser() raises when no variable is set and the uid has no passwd entry
        // (some containers); fall back to the placeholder rule rather than fail resolution.
        self.call_str("getpass", "getuser", vec![])
            .unwrap_or_else(|| placeholder_user(self))
    }

    fn cwd(&self) -> String {
        self.call_str("os", "getcwd", vec![])
            .unwrap_or_else(|| "/".to_owned())
    }

    fn home_of(&self, user: Option<&str>) -> Option<String> {
        let tilde = format!("~{}", user.unwrap_or(""));
        let expanded = self.call_str("os.path", "expanduser", vec![tilde.clone()])?;
        (expanded != tilde).then_some(expanded)
    }

    fn is_file(&self, path: &str) -> bool {
        let Ok(m) = self.py.import("os.path") else {
            return false;
        };
        m.getattr("isfile")
            .and_then(|f| f.call1((path,)))
            .and_then(|r| r.extract::<bool>())
            .unwrap_or(false)
    }

    fn file_info(&self, path: &str) -> FileInfo {
        // Paths reach here absolute (resolved against Python's cwd), so the file system
        // answers the same as Python's `os` would.
        crate::ssh::local::file_info(path)
    }
}
