//! The traffic mix: a set of workers that run from one quiet point to the next, each
//! bounded in operations and time, and stopped together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::task::JoinHandle;

use crate::tally::Tally;
use crate::{http, sse, ws};

/// Operations (requests, streams, sockets) one worker runs at most per phase.
pub(crate) const MAX_OPS: u32 = 1_000_000;

/// How long one operation may take before it counts as a hang: far above a large body
/// on a loaded debug build, and above the gateway's 10 s drain on SIGTERM.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker has to notice the stop and finish its operation.
const JOIN_TIMEOUT: Duration = Duration::from_secs(45);

/// Pause after an error, so that a worker does not spin on a gateway that is down.
pub(crate) const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What every worker of a phase shares.
pub(crate) struct Ctx {
    /// The gateway's public address.
    pub(crate) addr: SocketAddr,
    /// The Host visitors send: the tunnel's name under the gateway's domain.
    pub(crate) host: String,
    pub(crate) tally: Arc<Tally>,
    /// Large bodies are between these sizes, in bytes.
    pub(crate) large: (u64, u64),
    stop: AtomicBool,
    /// Loops end here whatever happens, so that nothing outlives the run.
    deadline: Instant,
}

impl Ctx {
    /// A context outside any phase, for the health probe.
    pub(crate) fn new(plan: &Plan, tally: &Arc<Tally>) -> Self {
        Ctx {
            addr: plan.addr,
            host: plan.host.clone(),
            tally: tally.clone(),
            large: plan.large,
            stop: AtomicBool::new(false),
            deadline: plan.deadline,
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// How many workers of each kind run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mix {
    /// GET and POST of small bodies, inline in one RPC call.
    pub(crate) small: usize,
    /// GET and POST of large bodies, streamed.
    pub(crate) large: usize,
    /// SSE streams of numbered events.
    pub(crate) sse: usize,
    /// WebSocket echo sockets.
    pub(crate) ws: usize,
}

/// Where the workers go and what they send.
pub(crate) struct Plan {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) mix: Mix,
    pub(crate) large: (u64, u64),
    pub(crate) deadline: Instant,
}

/// The workers of one phase.
pub(crate) struct Traffic {
    ctx: Arc<Ctx>,
    workers: Vec<(String, JoinHandle<()>)>,
}

impl Traffic {
    /// Starts every worker; `seed` picks their sizes and message contents.
    pub(crate) fn start(plan: &Plan, tally: &Arc<Tally>, seed: u64) -> Self {
        let ctx = Arc::new(Ctx::new(plan, tally));
        let mut seeds = StdRng::seed_from_u64(seed);
        let mut workers = Vec::new();
        let mut spawn = |name: String, worker: fn(Arc<Ctx>, StdRng) -> JoinHandle<()>| {
            let rng = StdRng::seed_from_u64(seeds.random());
            workers.push((name, worker(ctx.clone(), rng)));
        };
        for i in 0..plan.mix.small {
            spawn(format!("small-{i}"), |c, r| {
                tokio::spawn(http::worker(c, r, false))
            });
        }
        for i in 0..plan.mix.large {
            spawn(format!("large-{i}"), |c, r| {
                tokio::spawn(http::worker(c, r, true))
            });
        }
        for i in 0..plan.mix.sse {
            spawn(format!("sse-{i}"), |c, r| tokio::spawn(sse::worker(c, r)));
        }
        for i in 0..plan.mix.ws {
            spawn(format!("ws-{i}"), |c, r| tokio::spawn(ws::worker(c, r)));
        }
        Traffic { ctx, workers }
    }

    /// Tells every worker to stop after its current operation and waits for them; a
    /// worker that does not finish in time is a hang.
    pub(crate) async fn stop(self) {
        self.ctx.stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        for (name, mut worker) in self.workers {
            match tokio::time::timeout_at(deadline, &mut worker).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => self
                    .ctx
                    .tally
                    .fail("worker_panic", format!("{name}: {err}")),
                Err(_) => {
                    worker.abort();
                    self.ctx.tally.fail(
                        "hang",
                        format!("worker {name} still busy {JOIN_TIMEOUT:?} after the stop"),
                    );
                }
            }
        }
    }
}
