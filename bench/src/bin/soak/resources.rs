//! File descriptors and RSS of the gateway and the tunnel: sampled over time, and
//! checked against their baseline at each quiet point.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_bench::procfs;

use crate::procs::Pids;

/// Descriptors a process may hold above its baseline at a quiet point: a few keep-alive
/// connections to the origin still pooled by the tunnel, a WebSocket or two whose close
/// is still on its way. A leak of one per request or socket passes this within a cycle.
pub(crate) const FD_MARGIN: usize = 16;

/// RSS a process may hold above its baseline at a quiet point, in KiB: allocators keep
/// freed pages for reuse (mimalloc in capstan), and a phase's large bodies and 256 KiB
/// messages pass through buffers of a few MiB; 16 MiB is several times that and far below
/// what a leak per request, body or socket grows to over a soak.
pub(crate) const RSS_MARGIN_KIB: u64 = 16 * 1024;

/// How long descriptors may take to settle after the traffic stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Polls of `/proc` while settling, and how many equal readings in a row mean settled.
const SETTLE_POLL: Duration = Duration::from_millis(100);
const SETTLE_READINGS: usize = 5;

/// Descriptors and RSS of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) fds: usize,
    pub(crate) rss_kib: u64,
}

impl Usage {
    fn of(pid: u32) -> Option<Usage> {
        Some(Usage {
            fds: procfs::fd_count(pid)?,
            rss_kib: procfs::rss_kib(pid)?,
        })
    }

    /// Whether this is within the margins of `baseline`.
    pub(crate) fn near(&self, baseline: &Usage) -> bool {
        self.fds <= baseline.fds + FD_MARGIN && self.rss_kib <= baseline.rss_kib + RSS_MARGIN_KIB
    }
}

/// Gateway and tunnel at one moment; None for a process that was down.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pair {
    pub(crate) gateway: Option<Usage>,
    pub(crate) tunnel: Option<Usage>,
}

impl Pair {
    pub(crate) fn of(gateway: u32, tunnel: u32) -> Pair {
        Pair {
            gateway: Usage::of(gateway),
            tunnel: Usage::of(tunnel),
        }
    }
}

/// Waits until neither process's descriptor count has moved for `SETTLE_READINGS` polls
/// (connections closing after the traffic stopped), then returns the last reading.
pub(crate) async fn settled(gateway: u32, tunnel: u32) -> Pair {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = Pair::of(gateway, tunnel);
    let mut same = 0;
    while same < SETTLE_READINGS && Instant::now() < deadline {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = Pair::of(gateway, tunnel);
        let fds = |p: &Pair| (p.gateway.map(|u| u.fds), p.tunnel.map(|u| u.fds));
        same = if fds(&now) == fds(&last) { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Polls until both processes are near their baselines, up to `SETTLE_TIMEOUT`;
/// returns the last reading and whether it was near.
pub(crate) async fn back_to(baseline: &Pair, gateway: u32, tunnel: u32) -> (Pair, bool) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = Pair::of(gateway, tunnel);
        let near = |u: Option<Usage>, b: Option<Usage>| match (u, b) {
            (Some(u), Some(b)) => u.near(&b),
            _ => false,
        };
        let ok = near(now.gateway, baseline.gateway) && near(now.tunnel, baseline.tunnel);
        if ok || Instant::now() >= deadline {
            return (now, ok);
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// One point of the RSS curve.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    /// Seconds since the start of the run.
    pub(crate) at: f64,
    pub(crate) usage: Pair,
}

/// Samples both processes every `every` until the returned handle is dropped.
pub(crate) fn sample(
    pids: Pids,
    every: Duration,
    start: Instant,
) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            let [gateway, tunnel] = *pids.lock().unwrap_or_else(|e| e.into_inner());
            let usage = Pair {
                gateway: gateway.and_then(Usage::of),
                tunnel: tunnel.and_then(Usage::of),
            };
            let sample = Sample {
                at: start.elapsed().as_secs_f64(),
                usage,
            };
            out.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
        }
    });
    (samples, task)
}
