//! Pure rendering of specs and decisions to argv and shell text.
//!
//! Every renderer builds an argv (`Vec<String>`) and turns it into shell text through
//! [`quote`]/[`join`] only, so no user value ever reaches a shell unquoted. The few raw shell
//! fragments (redirections, `|| true`, the infiniband device expansion) are constants written
//! here, never values. With the default privilege prefix `sudo` and simple values the outputs are
//! exactly CVS's command strings, because CVS logs and tests compare them.

mod cvs_run;
mod docker;
pub mod lifecycle;
mod provision;
mod quote;
pub mod remote;
pub mod slurm;

pub use cvs_run::{
    CvsRuntimeArgs, INFINIBAND_EXPANSION_GUARDED, cvs_docker_run_command, cvs_runtime_args,
};
pub use docker::{
    INFINIBAND_EXPANSION, RunOptions, docker_exec_command, docker_run_argv, docker_run_command,
    image_exists_command, image_sha_status_command, is_running_command, load_image_command,
    remove_command, sshd_precheck_command, sshd_setup_commands,
};
pub use provision::{
    STDIN_RUNNER, provision_command, provision_command_limited, provision_stdin_command,
};
pub use quote::{join, quote};

use crate::config::pyrepr::str_repr;
use crate::error::{Error, Result};

/// The words of a privilege prefix such as `"sudo"`, `"sudo -n "` (CVS main's `sudo_prefix()`,
/// trailing space included) or `""` (none). They are parsed into words, not pasted, so they go
/// through the same quoting as everything else.
pub fn privilege_words(prefix: &str) -> Result<Vec<String>> {
    if prefix.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "privilege prefix {} contains a NUL character",
            str_repr(prefix)
        )));
    }
    shlex::split(prefix).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "privilege prefix {} is not a valid list of shell words (unbalanced quotes?)",
            str_repr(prefix)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_prefixes_split_into_words() {
        assert_eq!(privilege_words("sudo").unwrap(), ["sudo"]);
        assert_eq!(privilege_words("sudo -n ").unwrap(), ["sudo", "-n"]);
        assert_eq!(
            privilege_words("  sudo   -n -E").unwrap(),
            ["sudo", "-n", "-E"]
        );
        assert_eq!(
            privilege_words("sudo -u 'a b'").unwrap(),
            ["sudo", "-u", "a b"]
        );
        assert!(privilege_words("").unwrap().is_empty());
        assert!(privilege_words("   ").unwrap().is_empty());
    }

    #[test]
    fn bad_privilege_prefixes_are_refused() {
        for bad in ["sudo 'unbalanced", "sudo \"x", "sudo\0"] {
            assert!(
                matches!(privilege_words(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
