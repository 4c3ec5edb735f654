//! The Slurm transport: commands reach the nodes through `srun` (slurmd's own tree fan-out)
//! instead of one SSH connection per node. I/O, like `crate::ssh`, beside it.
//!
//! One call is one step (`srun` with one task per node) per distinct command; the task wrapper
//! (`render::slurm::TASK_WRAPPER`) frames each task's stdout, stderr and exit code so they come
//! back per host and byte-exact through srun's labelled output.

pub mod engine;
pub mod frame;
pub mod nodes;

pub use engine::{SlurmCluster, SlurmOptions};
