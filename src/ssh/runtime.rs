//! The process-wide tokio runtime every blocking entry point drives.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

/// One multi-threaded runtime for the process: callers from any thread `block_on` it
/// concurrently, and background work (killing abandoned remote commands) keeps running after a
/// caller returns.
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)))
            .thread_name("cvs-core-io")
            .enable_all()
            .build()
            .expect("the tokio runtime cannot be built (out of threads or file descriptors)")
    })
}
