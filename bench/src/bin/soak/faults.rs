//! Faults: which comes next and when (from the seed), injecting one, and waiting until
//! traffic through the tunnel is healthy again.

use std::time::{Duration, Instant};

use anyhow::bail;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

use crate::procs::Cluster;
use crate::tally::{Fault, Tally};
use crate::traffic::Ctx;

/// How long the tunnel may take to be reachable again: its reconnect backoff is capped
/// at 30 s, and a gateway on SIGTERM drains for up to 10 s before it exits.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between health probes.
const PROBE_PAUSE: Duration = Duration::from_millis(50);

/// The faults in the order the seed gives: each round is every kind once, shuffled, so
/// that even a 60 s run injects every kind.
pub(crate) struct Schedule {
    rng: StdRng,
    kinds: Vec<Fault>,
    round: Vec<Fault>,
    /// The traffic before a fault runs for a random time in this range.
    delay: (Duration, Duration),
}

impl Schedule {
    /// A schedule of `kinds` (at least one).
    pub(crate) fn new(seed: u64, kinds: &[Fault], delay: (Duration, Duration)) -> Self {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds: kinds.to_vec(),
            round: Vec::new(),
            delay,
        }
    }

    /// The next fault and how long the traffic runs before it.
    pub(crate) fn next(&mut self) -> (Fault, Duration) {
        if self.round.is_empty() {
            self.round = self.kinds.clone();
            self.round.shuffle(&mut self.rng);
        }
        let fault = self.round.remove(0);
        let delay = self.rng.random_range(self.delay.0..=self.delay.1);
        (fault, delay)
    }
}

/// Injects `fault`, restarts what it stopped, and waits until a probe through the
/// tunnel answers, and returns how long that took. Errors overlapping this window are
/// expected.
pub(crate) async fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    probe: &Ctx,
    tally: &Tally,
) -> anyhow::Result<Duration> {
    if fault == Fault::None {
        // A control cycle: no window, and the tunnel must answer at once.
        if !crate::http::probe(probe).await {
            bail!("with no fault injected, the tunnel did not answer a probe");
        }
        return Ok(Duration::ZERO);
    }
    tally.open_window(fault);
    let start = Instant::now();
    let mut exited_cleanly = true;
    match fault {
        Fault::TunnelKill => cluster.kill_tunnel().await?,
        Fault::GatewayTerm => exited_cleanly = cluster.restart_gateway(true).await?,
        Fault::GatewayKill => {
            cluster.restart_gateway(false).await?;
        }
        Fault::None => unreachable!("handled above"),
    }
    if !exited_cleanly {
        tally.fail(
            "slow_shutdown",
            "the gateway did not exit within 20 s of SIGTERM".into(),
        );
    }
    while !crate::http::probe(probe).await {
        if start.elapsed() >= RECOVERY_TIMEOUT {
            bail!(
                "{}: the tunnel did not answer within {RECOVERY_TIMEOUT:?}",
                fault.name()
            );
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    tally.close_window();
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_has_every_fault_and_a_seed_repeats_it() {
        let delay = (Duration::from_secs(1), Duration::from_secs(5));
        let run = |seed| {
            let mut schedule = Schedule::new(seed, &Fault::ALL, delay);
            (0..6).map(|_| schedule.next()).collect::<Vec<_>>()
        };
        let faults = run(7);
        for round in faults.chunks(3) {
            let mut kinds: Vec<Fault> = round.iter().map(|(f, _)| *f).collect();
            kinds.sort();
            assert_eq!(kinds, Fault::ALL);
        }
        assert!(faults.iter().all(|(_, d)| (delay.0..=delay.1).contains(d)));
        assert_eq!(faults, run(7));
    }
}
