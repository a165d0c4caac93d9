//! The soak driver: mixed traffic through a real gateway and tunnel while faults are
//! injected at seeded random moments; see docs/reliability.md.

mod faults;
mod http;
mod procs;
mod report;
mod resources;
mod sse;
mod tally;
mod traffic;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;

use crate::faults::Schedule;
use crate::procs::Cluster;
use crate::report::{Cycle, Summary};
use crate::resources::Pair;
use crate::tally::{Fault, Tally};
use crate::traffic::{Mix, Plan, Traffic};

/// The workers: enough to keep every path busy at once without saturating a shared
/// 2-core machine, where starved heartbeats would make faults of their own.
const MIX: Mix = Mix {
    small: 2,
    large: 1,
    sse: 1,
    ws: 2,
};

/// Large bodies: "a few MiB", each streamed in 64 KiB writes.
const LARGE: (u64, u64) = (1024 * 1024, 4 * 1024 * 1024);

/// Runs are "short" up to this long: shorter phases, denser samples.
const SHORT_RUN: Duration = Duration::from_secs(120);

/// How far past `--duration` the run may go (the last cycle, the final report) before
/// it counts as a hang.
const OVERRUN: Duration = Duration::from_secs(180);

/// Soak capstan: traffic through a gateway and a tunnel while both are killed and restarted.
#[derive(Parser)]
struct Args {
    /// The `capstan` binary.
    #[arg(long)]
    capstan: PathBuf,
    /// The `bench-origin` binary.
    #[arg(long)]
    origin: PathBuf,
    /// Seconds of soak (warm-up included).
    #[arg(long, default_value_t = 1800)]
    duration: u64,
    /// Seed of the fault schedule and the payloads; random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Faults to inject, in turn: `all`, `none` (a control run, where no error is
    /// expected), or a comma list of tunnel_kill9, gateway_sigterm, gateway_kill9.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Fail on known issues too (see docs/reliability.md), not only report them.
    #[arg(long)]
    strict: bool,
    /// Where the summary (JSON and markdown) and the process logs go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// The build profile of the binaries, for the report.
    #[arg(long, default_value = "")]
    profile: String,
    /// The commit under test, for the report.
    #[arg(long, default_value = "")]
    commit: String,
}

/// Phase lengths, which depend on the run's length.
struct Timing {
    warmup: Duration,
    /// Traffic before a fault: a random time in this range.
    before_fault: (Duration, Duration),
    /// Healthy traffic after a recovery, before the quiet point.
    after_recovery: Duration,
    sample_every: Duration,
}

impl Timing {
    fn for_run(duration: Duration) -> Self {
        let s = Duration::from_secs;
        if duration <= SHORT_RUN {
            Timing {
                warmup: s(5),
                before_fault: (s(2), s(6)),
                after_recovery: s(2),
                sample_every: s(2),
            }
        } else {
            Timing {
                warmup: s(30),
                before_fault: (s(10), s(40)),
                after_recovery: s(10),
                sample_every: s(5),
            }
        }
    }

    /// A cycle's longest likely length, to decide whether one more fits.
    fn cycle(&self) -> Duration {
        self.before_fault.1 + self.after_recovery + Duration::from_secs(4)
    }
}

/// `all`, `none`, or a comma list of fault names.
fn parse_faults(list: &str) -> anyhow::Result<Vec<Fault>> {
    if list == "all" {
        return Ok(Fault::ALL.to_vec());
    }
    list.split(',')
        .map(|name| Fault::parse(name.trim()).with_context(|| format!("unknown fault {name:?}")))
        .collect()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = capstan_bench::runtime()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(guarded(args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("soak: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The soak, ended early by SIGINT, SIGTERM or the overrun bound; dropping it kills
/// every process it started.
async fn guarded(args: Args) -> anyhow::Result<bool> {
    let limit = Duration::from_secs(args.duration) + OVERRUN;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::time::timeout(limit, soak(args)) => {
            result.with_context(|| format!("the soak ran past its bound of {limit:?}"))?
        }
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
        _ = term.recv() => anyhow::bail!("terminated"),
    }
}

async fn soak(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let faults = parse_faults(&args.faults)?;
    let duration = Duration::from_secs(args.duration);
    println!(
        "soak: seed {seed}, {} s; repeat with --seed {seed}",
        args.duration
    );
    let logs = args.out.join("logs");
    // Logs of an earlier run would mix with this one's; there may be none yet.
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let start = Instant::now();
    let cluster = Cluster::start(&args.capstan, &args.origin, &logs).await?;
    println!(
        "soak: gateway {} (pid {}), tunnel {} (pid {})",
        cluster.gateway_addr,
        cluster.gateway_pid(),
        cluster.url,
        cluster.tunnel_pid()
    );
    let plan = Plan {
        addr: cluster.gateway_addr,
        host: cluster.url.trim_start_matches("http://").to_owned(),
        mix: MIX,
        large: LARGE,
        deadline: start + duration + OVERRUN,
    };
    let mut run = Run {
        cluster,
        plan,
        tally: Arc::new(Tally::new(args.strict)),
        timing: Timing::for_run(duration),
        faults,
        seed,
        start,
        duration,
    };
    let (samples, sampler) =
        resources::sample(run.cluster.pids.clone(), run.timing.sample_every, start);
    let baseline = run.warm_up().await;
    println!("soak: baseline {}", report::pair_text(&baseline));
    let cycles = run.cycles(&baseline).await;
    sampler.abort();
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let summary = Summary {
        seed,
        planned_s: args.duration,
        elapsed_s: start.elapsed().as_secs_f64(),
        profile: args.profile,
        commit: args.commit,
        mix: run.plan.mix,
        large: run.plan.large,
        baseline,
        cycles,
        counts: run.tally.counts(),
        samples,
        start_retries: run.cluster.start_retries,
    };
    summary.write(&args.out)?;
    Ok(summary.passed())
}

/// One soak in progress.
struct Run {
    cluster: Cluster,
    plan: Plan,
    tally: Arc<Tally>,
    timing: Timing,
    /// The kinds to inject, in turn.
    faults: Vec<Fault>,
    seed: u64,
    start: Instant,
    duration: Duration,
}

impl Run {
    /// Traffic without faults, then the baseline: the warm-up grows every pool and
    /// buffer once, so that the baseline is what a process settles back to.
    async fn warm_up(&mut self) -> Pair {
        let traffic = Traffic::start(&self.plan, &self.tally, self.seed);
        tokio::time::sleep(self.timing.warmup).await;
        traffic.stop().await;
        resources::settled(self.cluster.gateway_pid(), self.cluster.tunnel_pid()).await
    }

    /// Fault cycles until the next one would not fit in the duration; stops early when
    /// the tunnel does not come back.
    async fn cycles(&mut self, baseline: &Pair) -> Vec<Cycle> {
        let mut schedule = Schedule::new(self.seed, &self.faults, self.timing.before_fault);
        let mut cycles = Vec::new();
        while self.start.elapsed() + self.timing.cycle() <= self.duration {
            let (fault, delay) = schedule.next();
            let seed = self.seed.wrapping_add(cycles.len() as u64 + 1);
            match self.cycle(fault, delay, seed, baseline).await {
                Some(cycle) => {
                    println!("soak: {}", cycle.line());
                    cycles.push(cycle);
                }
                None => break,
            }
        }
        cycles
    }

    /// Traffic, `fault` after `delay`, recovery, healthy traffic, then a quiet point
    /// where descriptors and RSS must be back near `baseline`.
    async fn cycle(
        &mut self,
        fault: Fault,
        delay: Duration,
        seed: u64,
        baseline: &Pair,
    ) -> Option<Cycle> {
        let probe = traffic::Ctx::new(&self.plan, &self.tally);
        let traffic = Traffic::start(&self.plan, &self.tally, seed);
        tokio::time::sleep(delay).await;
        let at = self.start.elapsed().as_secs_f64();
        let recovery = match faults::inject(&mut self.cluster, fault, &probe, &self.tally).await {
            Ok(recovery) => recovery,
            Err(err) => {
                self.tally.fail("no_recovery", format!("{err:#}"));
                traffic.stop().await;
                return None;
            }
        };
        tokio::time::sleep(self.timing.after_recovery).await;
        traffic.stop().await;
        let (gateway, tunnel) = (self.cluster.gateway_pid(), self.cluster.tunnel_pid());
        let (quiet, near) = resources::back_to(baseline, gateway, tunnel).await;
        if !near {
            let (now, base) = (report::pair_text(&quiet), report::pair_text(baseline));
            let what = format!(
                "after {} at {at:.1}s: {now} against baseline {base}",
                fault.name()
            );
            self.tally.fail("leak", what);
        }
        Some(Cycle {
            fault,
            at,
            recovery_s: recovery.as_secs_f64(),
            quiet,
            near,
        })
    }
}
