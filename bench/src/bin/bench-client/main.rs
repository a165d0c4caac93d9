//! The benchmark load client: every measurement the harness takes that wrk does not.

mod http;
mod ws;

use std::time::Duration;

use capstan_bench::{procfs, stats::Json};
use clap::{Parser, Subcommand};

/// Load client for bench/run. Each subcommand prints one JSON object on stdout.
///
/// Visitors connect to `--addr` and send `--host` as the Host header, which is how
/// capstan's gateway picks a tunnel.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where visitors connect and what they call the host.
#[derive(clap::Args, Clone)]
struct Target {
    /// Address to connect to, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Host header to send; defaults to `--addr`.
    #[arg(long)]
    host: Option<String>,
}

impl Target {
    fn host(&self) -> &str {
        self.host.as_deref().unwrap_or(&self.addr)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print N free TCP ports on 127.0.0.1, one a line.
    FreePorts {
        /// How many.
        count: usize,
    },
    /// Poll `GET PATH` until it answers 200, or fail after the timeout.
    Wait {
        #[command(flatten)]
        target: Target,
        /// Path to fetch.
        #[arg(long, default_value = "/1k")]
        path: String,
        /// Seconds to keep trying.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// GET /1k on a new connection per request: req/s and latency percentiles.
    Conn {
        #[command(flatten)]
        target: Target,
        /// Requests in flight, each on its own connection.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// GET /bytes?n=SIZE or POST SIZE bytes to /sink, checked by sha256: MiB/s.
    Body {
        #[command(flatten)]
        target: Target,
        /// `get` or `post`.
        #[arg(long)]
        method: String,
        /// Body size in bytes.
        #[arg(long)]
        size: u64,
        /// Transfers in a row on one connection; the rate is over all of them.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Read N events from /sse and report how late each arrives after it was sent.
    Sse {
        #[command(flatten)]
        target: Target,
        /// Events to measure.
        #[arg(long, default_value_t = 300)]
        events: u64,
        /// Events to read first and not count.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
    },
    /// WebSocket echo round trips, one message at a time, per message size.
    WsRtt {
        #[command(flatten)]
        target: Target,
        /// Message sizes in bytes, comma-separated.
        #[arg(long, default_value = "32,4096,65536,1048576", value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Round trips for sizes up to 4 KiB; bigger sizes take fewer, see `ws::rounds`.
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Pipelined WebSocket echo: a window of messages in flight, messages per second.
    WsPipe {
        #[command(flatten)]
        target: Target,
        /// Message size in bytes.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Messages sent but not yet echoed, at most.
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Seconds to run before counting.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds to count.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// Open N WebSockets, echo once on each, hold them, and report memory per socket.
    WsIdle {
        #[command(flatten)]
        target: Target,
        /// Sockets to hold open at once.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Gateway-side process ids, comma-separated (their children count too).
        #[arg(long, default_value = "")]
        gateway_pids: String,
        /// Client-side process ids, comma-separated.
        #[arg(long, default_value = "")]
        client_pids: String,
    },
    /// CPU ticks and RSS summed over process trees.
    Proc {
        /// Process ids, comma-separated.
        #[arg(long, default_value = "")]
        pids: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = capstan_bench::runtime()?.block_on(run(cli.command))?;
    println!("{json}");
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<String> {
    Ok(match command {
        Command::FreePorts { count } => {
            // Hold all the listeners at once so that the ports differ.
            let listeners: Vec<_> = (0..count)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<Result<_, _>>()?;
            let ports: Vec<String> = listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port().to_string()))
                .collect::<Result<_, _>>()?;
            ports.join("\n")
        }
        Command::Wait {
            target,
            path,
            timeout,
        } => http::wait(&target, &path, Duration::from_secs_f64(timeout)).await?,
        Command::Conn {
            target,
            concurrency,
            duration,
        } => http::conn(&target, concurrency, Duration::from_secs_f64(duration)).await?,
        Command::Body {
            target,
            method,
            size,
            repeat,
        } => http::body(&target, &method, size, repeat).await?,
        Command::Sse {
            target,
            events,
            warmup,
        } => http::sse(&target, events, warmup).await?,
        Command::WsRtt {
            target,
            sizes,
            count,
        } => ws::rtt(&target, &sizes, count).await?,
        Command::WsPipe {
            target,
            size,
            window,
            warmup,
            duration,
        } => {
            let warmup = Duration::from_secs_f64(warmup);
            ws::pipe(
                &target,
                size,
                window,
                warmup,
                Duration::from_secs_f64(duration),
            )
            .await?
        }
        Command::WsIdle {
            target,
            count,
            gateway_pids,
            client_pids,
        } => {
            let pids = [
                procfs::parse_pids(&gateway_pids),
                procfs::parse_pids(&client_pids),
            ];
            ws::idle(&target, count, &pids).await?
        }
        Command::Proc { pids } => {
            let usage = procfs::usage(&procfs::parse_pids(&pids));
            let mut json = Json::new();
            json.num("cpu_ticks", usage.cpu_ticks as f64)
                .num("rss_kib", usage.rss_kib as f64)
                .num("processes", usage.processes as f64);
            json.finish()
        }
    })
}
