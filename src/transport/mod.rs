//! The seam between "run this on these hosts" and how it gets there. The lifecycle driver, the
//! Python API and the CLI hold an [`AnyTransport`]; the OpenSSH engine (`crate::ssh`) and the
//! Slurm engine (`crate::slurm`) implement [`Transport`].
//!
//! Upload and download are ordinary jobs (`Input::File`, `OutputTo::File`), so a transport
//! only needs to run jobs, hold a command open (the lifecycle's per-host lock) and close.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::slurm::SlurmCluster;
use crate::ssh::cluster::{EventSink, HoldFailure};
use crate::ssh::{Cluster, HostResult, JobSpec};

// Which engine to use is decided by the (pure) configuration layer.
pub use crate::config::{Kind, TRANSPORT_ENV, resolve_kind};

/// What the layers above need from a fan-out engine.
pub trait Transport: Send + Sync + 'static {
    /// Keeps a held command running until dropped.
    type Holder: Send + 'static;

    /// `"ssh"` or `"slurm"`.
    fn kind(&self) -> &'static str;

    fn hosts(&self) -> &[String];

    /// Check that every host of a call belongs to this cluster and appears once.
    fn check_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for h in hosts {
            if !self.hosts().iter().any(|x| x == h) {
                return Err(Error::InvalidArgument(format!(
                    "host {h:?} is not in this cluster"
                )));
            }
            if !seen.insert(h) {
                return Err(Error::InvalidArgument(format!(
                    "host {h:?} is requested twice"
                )));
            }
        }
        Ok(())
    }

    /// Run one job per host, concurrently; one result per job, in `jobs` order, whatever
    /// happens on the other hosts. `cancel` turning true stops the remote work.
    fn run_many(
        self: &Arc<Self>,
        jobs: Vec<(String, JobSpec)>,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Vec<HostResult>> + Send;

    /// Make sure `hosts` can be reached (no command runs); the failures, by host.
    fn connect(self: &Arc<Self>, hosts: &[String]) -> impl Future<Output = Vec<HostResult>> + Send;

    /// Start `cmd` on `host` and keep it running until the holder is dropped, once it printed
    /// each stage's line in time (see `ssh::Cluster::hold`).
    fn hold(
        self: &Arc<Self>,
        host: &str,
        cmd: &str,
        stages: &[(&str, Duration)],
        kill_prefix: &str,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = std::result::Result<(Self::Holder, String), HoldFailure>> + Send;

    /// PIDs of local helper processes that live across calls (SSH masters), for accounting.
    fn master_pids(&self) -> impl Future<Output = Vec<u32>> + Send;

    /// Release what the transport holds; later calls fail per host.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

impl Transport for Cluster {
    type Holder = crate::ssh::cluster::Holder;

    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn hosts(&self) -> &[String] {
        Cluster::hosts(self)
    }

    fn check_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Result<()> {
        Cluster::check_hosts(self, hosts)
    }

    fn run_many(
        self: &Arc<Self>,
        jobs: Vec<(String, JobSpec)>,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Vec<HostResult>> + Send {
        Cluster::run_many(self, jobs, events, cancel)
    }

    fn connect(self: &Arc<Self>, hosts: &[String]) -> impl Future<Output = Vec<HostResult>> + Send {
        Cluster::connect(self, hosts)
    }

    fn hold(
        self: &Arc<Self>,
        host: &str,
        cmd: &str,
        stages: &[(&str, Duration)],
        kill_prefix: &str,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = std::result::Result<(Self::Holder, String), HoldFailure>> + Send {
        Cluster::hold(self, host, cmd, stages, kill_prefix, cancel)
    }

    fn master_pids(&self) -> impl Future<Output = Vec<u32>> + Send {
        Cluster::master_pids(self)
    }

    fn close(&self) -> impl Future<Output = ()> + Send {
        Cluster::close(self)
    }
}

impl Transport for SlurmCluster {
    type Holder = crate::slurm::engine::Holder;

    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn hosts(&self) -> &[String] {
        SlurmCluster::hosts(self)
    }

    fn run_many(
        self: &Arc<Self>,
        jobs: Vec<(String, JobSpec)>,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Vec<HostResult>> + Send {
        SlurmCluster::run_many(self, jobs, events, cancel)
    }

    fn connect(self: &Arc<Self>, hosts: &[String]) -> impl Future<Output = Vec<HostResult>> + Send {
        let this = self.clone();
        let hosts = hosts.to_vec();
        async move { SlurmCluster::connect(&this, &hosts).await }
    }

    fn hold(
        self: &Arc<Self>,
        host: &str,
        cmd: &str,
        stages: &[(&str, Duration)],
        kill_prefix: &str,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = std::result::Result<(Self::Holder, String), HoldFailure>> + Send {
        SlurmCluster::hold(self, host, cmd, stages, kill_prefix, cancel)
    }

    fn master_pids(&self) -> impl Future<Output = Vec<u32>> + Send {
        std::future::ready(Vec::new())
    }

    fn close(&self) -> impl Future<Output = ()> + Send {
        SlurmCluster::close(self)
    }
}

/// Either engine, chosen at run time (`transport="ssh"|"slurm"`).
pub enum AnyTransport {
    Ssh(Arc<Cluster>),
    Slurm(Arc<SlurmCluster>),
}

/// What [`AnyTransport::hold`] keeps running.
pub enum AnyHolder {
    Ssh(crate::ssh::cluster::Holder),
    Slurm(crate::slurm::engine::Holder),
}

impl AnyTransport {
    pub fn kind(&self) -> &'static str {
        match self {
            AnyTransport::Ssh(c) => c.kind(),
            AnyTransport::Slurm(c) => c.kind(),
        }
    }

    pub fn hosts(&self) -> &[String] {
        match self {
            AnyTransport::Ssh(c) => Transport::hosts(&**c),
            AnyTransport::Slurm(c) => Transport::hosts(&**c),
        }
    }

    pub fn check_hosts<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> Result<()> {
        match self {
            AnyTransport::Ssh(c) => Transport::check_hosts(&**c, hosts),
            AnyTransport::Slurm(c) => Transport::check_hosts(&**c, hosts),
        }
    }

    /// The SSH engine, for what only it has (connection options, masters).
    pub fn ssh(&self) -> Option<&Arc<Cluster>> {
        match self {
            AnyTransport::Ssh(c) => Some(c),
            AnyTransport::Slurm(_) => None,
        }
    }

    pub async fn run_many(
        &self,
        jobs: Vec<(String, JobSpec)>,
        events: Option<EventSink>,
        cancel: watch::Receiver<bool>,
    ) -> Vec<HostResult> {
        match self {
            AnyTransport::Ssh(c) => Transport::run_many(c, jobs, events, cancel).await,
            AnyTransport::Slurm(c) => Transport::run_many(c, jobs, events, cancel).await,
        }
    }

    pub async fn connect(&self, hosts: &[String]) -> Vec<HostResult> {
        match self {
            AnyTransport::Ssh(c) => Transport::connect(c, hosts).await,
            AnyTransport::Slurm(c) => Transport::connect(c, hosts).await,
        }
    }

    pub async fn hold(
        &self,
        host: &str,
        cmd: &str,
        stages: &[(&str, Duration)],
        kill_prefix: &str,
        cancel: watch::Receiver<bool>,
    ) -> std::result::Result<(AnyHolder, String), HoldFailure> {
        match self {
            AnyTransport::Ssh(c) => Transport::hold(c, host, cmd, stages, kill_prefix, cancel)
                .await
                .map(|(h, s)| (AnyHolder::Ssh(h), s)),
            AnyTransport::Slurm(c) => Transport::hold(c, host, cmd, stages, kill_prefix, cancel)
                .await
                .map(|(h, s)| (AnyHolder::Slurm(h), s)),
        }
    }

    pub async fn master_pids(&self) -> Vec<u32> {
        match self {
            AnyTransport::Ssh(c) => Transport::master_pids(&**c).await,
            AnyTransport::Slurm(c) => Transport::master_pids(&**c).await,
        }
    }

    pub async fn close(&self) {
        match self {
            AnyTransport::Ssh(c) => Transport::close(&**c).await,
            AnyTransport::Slurm(c) => Transport::close(&**c).await,
        }
    }
}
