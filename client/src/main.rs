//! The `capstan` command: `capstan PORT` shares a local port; `capstan gateway` runs a gateway.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use capstan_client::embedded::GatewayChoice;
use capstan_client::{ClientOptions, LocalPort, Tunnel};
use capstan_gateway::{Gateway, GatewayOptions};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

// capnp-rpc and hyper allocate per message and per request: with mimalloc a proxied
// request cost gateway plus client about 12% less CPU than with glibc's malloc
// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Put a local HTTP service on a public URL, over Cap'n Proto RPC.
#[derive(Parser)]
#[command(
    name = "capstan",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    tunnel: TunnelArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway: the public server that tunnels register with.
    Gateway(GatewayArgs),
}

#[derive(Args)]
struct TunnelArgs {
    /// The local port to share (3000), or HOST:PORT.
    #[arg(required = true)]
    port: Option<String>,
    /// The gateway, e.g. http://127.0.0.1:8080 or tcp://HOST:RPC_PORT. Without it, a
    /// gateway starts inside this process.
    #[arg(long, env = "CAPSTAN_GATEWAY")]
    gateway: Option<String>,
    /// The name to serve at: http://NAME.DOMAIN. Random by default.
    #[arg(long, env = "CAPSTAN_NAME")]
    name: Option<String>,
    /// The gateway's token.
    #[arg(
        long,
        env = "CAPSTAN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    token: String,
    /// The largest WebSocket message the local service may send, in bytes; a bigger one
    /// closes that socket with 1009.
    #[arg(long, default_value_t = capstan::websocket::DEFAULT_MAX_MESSAGE)]
    max_ws_message: usize,
}

#[derive(Args)]
struct GatewayArgs {
    /// Public address for visitors and tunnel WebSockets.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tunnels are served at NAME.DOMAIN.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Token tunnels must present; repeat for several. None means open.
    #[arg(
        long,
        env = "CAPSTAN_TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    token: Vec<String>,
    /// Also accept plain Cap'n Proto over TCP here (pycapnp, C++ peers).
    #[arg(long)]
    rpc_listen: Option<SocketAddr>,
    /// The public base URL when behind a proxy, e.g. https://tunnels.example.com.
    #[arg(long)]
    public_url: Option<String>,
    /// Most requests in flight per tunnel; more get 503.
    #[arg(long, default_value_t = capstan::DEFAULT_MAX_INFLIGHT)]
    max_inflight: usize,
    /// The largest WebSocket message a visitor may send, in bytes; a bigger one closes
    /// that socket with 1009.
    #[arg(long, default_value_t = capstan::websocket::DEFAULT_MAX_MESSAGE)]
    max_ws_message: usize,
    /// How long a disconnected tunnel's name stays reserved for its token (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = duration)]
    grace: Duration,
    /// How long a visitor has to send a request head; also the keep-alive idle timeout.
    #[arg(long, default_value = "10s", value_parser = duration)]
    header_timeout: Duration,
    /// The largest request head, in bytes; a bigger one gets 431.
    #[arg(long, default_value_t = GatewayOptions::default().max_header_bytes)]
    max_header_bytes: usize,
    /// Most open connections from one IP address, per port; more get 429. 0: no limit.
    #[arg(long, default_value_t = GatewayOptions::default().max_connections_per_ip)]
    max_conns_per_ip: usize,
    /// The largest request body, in bytes; a bigger one gets 413. No limit by default.
    #[arg(long)]
    max_body: Option<u64>,
    /// Keep the X-Forwarded-For and Forwarded headers visitors send: only behind a proxy
    /// that sets them itself.
    #[arg(long)]
    trust_forwarded: bool,
}

/// Parses "30s", "500ms", "2m" or a bare number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|err| format!("{text:?}: {err}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| tokio::task::LocalSet::new().block_on(&rt, run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    tokio::task::spawn_local(signalled(stop.clone()));
    match cli.command {
        Some(Command::Gateway(args)) => gateway(args, stop).await,
        None => tunnel(cli.tunnel, stop).await,
    }
}

async fn gateway(args: GatewayArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let mut options = GatewayOptions::default();
    options.domain = args.domain;
    options.tokens = args.token.into_iter().filter(|t| !t.is_empty()).collect();
    options.public_url = args.public_url;
    options.max_inflight_per_tunnel = args.max_inflight;
    options.max_ws_message = args.max_ws_message;
    options.grace = args.grace;
    options.header_timeout = args.header_timeout;
    options.max_header_bytes = args.max_header_bytes;
    options.max_connections_per_ip = args.max_conns_per_ip;
    options.max_request_body = args.max_body;
    options.trust_forwarded = args.trust_forwarded;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let mut gateway = Gateway::new(options, listener)?;
    if let Some(addr) = args.rpc_listen {
        let rpc = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        gateway = gateway.with_rpc_listener(rpc);
    }
    // Like the tunnel's URL, the address goes first on stdout, for scripts.
    println!("http://{}", gateway.local_addr()?);
    tracing::info!(rpc = ?args.rpc_listen, "gateway ready");
    gateway.serve(stop.cancelled_owned()).await?;
    Ok(())
}

async fn tunnel(args: TunnelArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let port = args
        .port
        .context("give the local port to share, e.g. `capstan 3000`")?;
    let authority = if port.contains(':') {
        port
    } else {
        format!("localhost:{port}")
    };
    let gateway = GatewayChoice::pick(args.gateway)
        .await
        .context("starting the embedded gateway")?;
    let mut options = ClientOptions::new(gateway.url()).token(args.token);
    options.name = args.name;
    options.max_ws_message = args.max_ws_message;
    let tunnel = Tunnel::connect(options, LocalPort::new(&authority)).await?;
    println!("{}", tunnel.url());
    tracing::info!(origin = %authority, url = %tunnel.url(), "tunnel ready");
    tunnel.run(stop.cancelled_owned()).await?;
    gateway.shutdown().await?;
    Ok(())
}

/// Cancels `stop` on SIGINT or SIGTERM (what `docker stop` and systemd send).
async fn signalled(stop: CancellationToken) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => drop(term.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
    stop.cancel();
}
