//! cvs-core: the Rust core of AMD's Cluster Validation Suite transport and container layer.
//!
//! Layers, each depending only on those below it:
//! - [`config`]: pure model and resolution of cluster/testsuite configuration;
//! - [`lifecycle`]: pure container-lifetime decisions from probe observations;
//! - [`render`]: pure rendering of decisions and specs to argv and shell text (quoting lives here);
//! - [`ssh`] and [`slurm`]: the I/O, one engine each (OpenSSH masters; srun steps), behind
//!   the [`transport`] seam the lifecycle driver and the Python API use;
//! - `python` (feature `python`): the only pyo3 code.

pub mod config;
pub mod error;
pub mod lifecycle;
pub mod render;
pub mod slurm;
pub mod ssh;
pub mod transport;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Issue, Result};
