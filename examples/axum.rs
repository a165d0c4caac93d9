//! Serves an axum app (a page and a WebSocket echo) through a tunnel, with no local port.
//!
//! Run it with `cargo run --example axum`. It uses the gateway given by
//! `CAPSTAN_GATEWAY`, and otherwise starts one
//! inside this process. The public URL is the first line on stdout; Ctrl-C stops it.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use capstan_client::embedded::GatewayChoice;
use capstan_client::{ClientOptions, ServiceOrigin, Tunnel};

const PAGE: &str = r#"<!doctype html>
<title>capstan + axum</title>
<p>Served by axum through a capstan tunnel, with no local port.</p>
<pre id="log"></pre>
<script>
  const url = new URL("/ws", location.href);
  url.protocol = url.protocol.replace("http", "ws");
  const ws = new WebSocket(url);
  ws.onopen = () => ws.send("hello over the tunnel");
  ws.onmessage = (event) => (document.getElementById("log").textContent += event.data + "\n");
</script>
"#;

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/ws",
            get(|upgrade: WebSocketUpgrade| async { upgrade.on_upgrade(echo) }),
        )
}

/// Sends every text and binary message back; axum answers pings itself.
async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(text) => Message::Text(format!("echo: {}", text.as_str()).into()),
            Message::Binary(data) => Message::Binary(data),
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

// One thread and a LocalSet: the tunnel is `!Send`, since capnp-rpc is single-threaded.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // The tunnel logs one line per request; stdout stays for the URL.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::task::LocalSet::new().run_until(serve()).await
}

async fn serve() -> anyhow::Result<()> {
    // Kept for as long as the tunnel runs: an embedded gateway lives in this process.
    let gateway = GatewayChoice::pick(std::env::var("CAPSTAN_GATEWAY").ok()).await?;
    let options = ClientOptions::new(gateway.url());
    // Each connection the gateway makes becomes an in-memory pipe to the Router.
    let tunnel = Tunnel::connect(options, ServiceOrigin::new(app())).await?;
    println!("{}", tunnel.url());
    tunnel
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    gateway.shutdown().await?;
    Ok(())
}
