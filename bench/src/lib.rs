//! Shared pieces of the benchmark binaries: deterministic payloads, percentiles, `/proc`.

pub mod pattern;
pub mod procfs;
pub mod stats;

/// A tokio runtime with one worker per CPU this process may run on.
///
/// `taskset` narrows the affinity mask, and `available_parallelism` honours it, so a
/// binary pinned to one core gets a current-thread runtime and does not pay for idle
/// workers stealing from each other on the same core.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}
