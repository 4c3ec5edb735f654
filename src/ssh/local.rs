//! Control-host file access for the layers above (they stay pure and receive text).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use crate::config::{FILE_HEAD_BYTES, FileInfo, FileKind};
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

/// What the configuration checks need to know about a control-host path, links followed.
pub fn file_info(path: &str) -> FileInfo {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileInfo::default(),
        Err(e) => {
            return FileInfo {
                error: Some(e.to_string()),
                ..FileInfo::default()
            };
        }
    };
    let kind = if meta.is_file() {
        FileKind::Regular
    } else if meta.is_dir() {
        FileKind::Directory
    } else {
        FileKind::Other
    };
    let mut info = FileInfo {
        kind,
        mode: meta.permissions().mode() & 0o7777,
        size: meta.len(),
        ..FileInfo::default()
    };
    if kind == FileKind::Regular {
        let read = std::fs::File::open(path).and_then(|f| {
            let mut head = Vec::with_capacity(FILE_HEAD_BYTES);
            f.take(FILE_HEAD_BYTES as u64).read_to_end(&mut head)?;
            Ok(head)
        });
        match read {
            Ok(head) => info.head = head,
            Err(e) => info.error = Some(e.to_string()),
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_info_reports_kind_mode_and_head() {
        let dir = std::env::temp_dir().join(format!("cvs-core-file-info-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("k");
        std::fs::write(&file, vec![b'x'; FILE_HEAD_BYTES + 10]).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let info = file_info(file.to_str().unwrap());
        assert_eq!(info.kind, FileKind::Regular);
        assert_eq!(info.mode, 0o640);
        assert_eq!(info.size, (FILE_HEAD_BYTES + 10) as u64);
        assert_eq!(info.head.len(), FILE_HEAD_BYTES);
        assert_eq!(file_info(dir.to_str().unwrap()).kind, FileKind::Directory);
        assert_eq!(file_info("/dev/null").kind, FileKind::Other);
        assert_eq!(
            file_info(dir.join("absent").to_str().unwrap()),
            FileInfo::default()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
