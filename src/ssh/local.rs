//! Control-host file access for the layers above (they stay pure and receive text).

use crate::error::{Error, Issue, Result};

/// Read a configuration file, naming it in the error.
pub fn read_config_file(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::config(Issue::verbatim(
            "",
            format!("cannot read configuration file {path:?}: {e}"),
        ))
    })
}

/// Read a local file's bytes (the setup script), naming it in the error.
pub fn read_file_bytes(path: &str, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(Issue::verbatim(
            "",
            format!("Cannot read {what} '{path}': {e}"),
        ))
    })
}
