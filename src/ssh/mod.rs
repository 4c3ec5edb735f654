//! The I/O layer. Everything that touches the file system, processes or the network lives
//! below this module; the layers above it are pure.
//!
//! The fan-out engine runs on tokio with one OpenSSH master per host (the `openssh` crate's
//! native mux): the user's ssh configuration, agent, known_hosts, ProxyJump and certificates
//! apply exactly as with their own `ssh`.

pub mod cluster;
pub mod job;
pub mod lifecycle;
pub mod local;
pub mod master;
pub mod options;
pub mod persist;
pub mod result;
pub mod runtime;

pub use cluster::{Cluster, Event, EventSink, Phase};
pub use job::{Input, JobSpec, OutputTo};
pub use options::{ConnectOptions, HostKeyPolicy, Secret};
pub use result::{Group, HostResult, Status, fold};
