//! Live-object gauges: counts that tests and health checks can read and wait on.

use tokio::sync::watch;

/// A count of live things (sockets, tasks, capabilities), shared across threads.
///
/// Each live thing holds a [`GaugeGuard`]; dropping it counts down. Waiting for a value
/// needs no polling.
#[derive(Debug, Clone)]
pub struct Gauge(watch::Sender<usize>);

impl Default for Gauge {
    fn default() -> Self {
        Self(watch::Sender::new(0))
    }
}

impl Gauge {
    /// Counts one more live thing until the guard is dropped.
    pub fn guard(&self) -> GaugeGuard {
        self.0.send_modify(|n| *n += 1);
        GaugeGuard(self.0.clone())
    }

    /// The count now.
    pub fn get(&self) -> usize {
        *self.0.borrow()
    }

    /// Resolves once the count satisfies `done`.
    pub async fn wait_for(&self, done: impl FnMut(&usize) -> bool) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(done).await;
    }
}

/// One live thing; see [`Gauge::guard`].
#[derive(Debug)]
pub struct GaugeGuard(watch::Sender<usize>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}
