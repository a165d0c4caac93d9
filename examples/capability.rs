//! A Cap'n Proto `Counter` served through a tunnel, and the remote Rust client that calls it.
//!
//! Run `cargo run --example capability -- serve` (gateway from `--gateway URL` or
//! `CAPSTAN_GATEWAY`, else one starts in process); it prints the URL first on stdout.
//! Then `cargo run --example capability -- call URL 2 3` adds each delta and prints the
//! totals. Each WebSocket connection gets a fresh counter.

use std::cell::Cell;
use std::rc::Rc;

use anyhow::{bail, Context as _};
use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::example_capnp::counter;
use capstan::transport::{rpc_system, WebSocketIo};
use capstan_client::embedded::GatewayChoice;
use capstan_client::{CapabilityOrigin, ClientOptions, Tunnel};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Counter(Cell<i64>);

impl counter::Server for Counter {
    async fn add(
        self: Rc<Self>,
        params: counter::AddParams,
        mut results: counter::AddResults,
    ) -> Result<(), capnp::Error> {
        self.0.set(self.0.get() + params.get()?.get_delta());
        results.get().set_total(self.0.get());
        Ok(())
    }
}

// One thread and a LocalSet: capnp-rpc capabilities and connections are `!Send`.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let local = tokio::task::LocalSet::new();
    match args.as_slice() {
        ["serve"] => local.run_until(serve(None)).await,
        ["serve", "--gateway", url] => local.run_until(serve(Some(url))).await,
        ["call", url, deltas @ ..] => local.run_until(call(url, deltas)).await,
        _ => bail!("usage: capability serve [--gateway URL] | capability call URL [DELTA...]"),
    }
}

async fn serve(gateway: Option<&str>) -> anyhow::Result<()> {
    let url = gateway
        .map(str::to_owned)
        .or_else(|| std::env::var("CAPSTAN_GATEWAY").ok());
    // Kept for as long as the tunnel runs: an embedded gateway lives in this process.
    let gateway = GatewayChoice::pick(url).await?;
    // Called once per visitor WebSocket: that connection's bootstrap capability.
    let origin = CapabilityOrigin::new(|| {
        capnp_rpc::new_client::<counter::Client, _>(Counter(Cell::new(0))).client
    });
    let tunnel = Tunnel::connect(ClientOptions::new(gateway.url()), origin).await?;
    println!("{}", tunnel.url());
    tunnel
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    gateway.shutdown().await?;
    Ok(())
}

async fn call(url: &str, deltas: &[&str]) -> anyhow::Result<()> {
    let deltas: Vec<i64> = deltas.iter().map(|d| d.parse()).collect::<Result<_, _>>()?;
    let uri: http::Uri = url.parse().context("URL")?;
    let authority = uri.authority().context("URL has no host")?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    // `*.localhost` need not resolve (glibc does not), but it is always this machine:
    // dial 127.0.0.1 and let the Host header pick the tunnel.
    let host = authority.host();
    let dial = if host == "localhost" || host.ends_with(".localhost") {
        format!("127.0.0.1:{}", authority.port_u16().unwrap_or(80))
    } else {
        authority.to_string()
    };
    // Plain ws:// only: this example builds tokio-tungstenite without TLS.
    let mut request = format!("ws://{dial}{path}").into_client_request()?;
    request
        .headers_mut()
        .insert("host", authority.as_str().parse()?);
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;

    // We offer nothing (`None`) and ask the other side (the server) for its bootstrap.
    let mut rpc = rpc_system(WebSocketIo::new(socket), Side::Client, None);
    let counter: counter::Client = rpc.bootstrap(Side::Server);
    let disconnector = rpc.get_disconnector();
    // The RpcSystem future runs the connection; calls resolve only while it is polled.
    tokio::task::spawn_local(rpc);
    for delta in deltas {
        let mut request = counter.add_request();
        request.get().set_delta(delta);
        let response = request.send().promise.await?;
        println!("add {delta} -> total {}", response.get()?.get_total());
    }
    // Ends the connection cleanly, with a WebSocket close, rather than just vanishing.
    disconnector.await?;
    Ok(())
}
