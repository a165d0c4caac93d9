//! The lowest level: a hand-written `Fetcher` capability that answers every request itself.
//!
//! Run it with `cargo run --example fetcher`. It uses the gateway given by
//! `CAPSTAN_GATEWAY`, and otherwise starts one
//! inside this process. The public URL is the first line on stdout; Ctrl-C stops it.
//! Every request gets `200 text/plain` with its method and path; WebSockets get 502.

use std::rc::Rc;

use capstan::capstan_capnp::fetcher;
use capstan_client::embedded::GatewayChoice;
use capstan_client::{ClientOptions, Tunnel};

struct Echo;

impl fetcher::Server for Echo {
    async fn fetch(
        self: Rc<Self>,
        params: fetcher::FetchParams,
        mut results: fetcher::FetchResults,
    ) -> Result<(), capnp::Error> {
        // The request body (inline, or a `BodySource` to pull) is not needed here.
        let request = params.get()?.get_request()?;
        let method = request.get_method()?.to_str()?;
        // The path is raw bytes as the visitor sent them, not necessarily UTF-8.
        let path = String::from_utf8_lossy(request.get_path()?);
        let body = format!("{method} {path}\n");

        // Small and of known length: answer inline, in one round trip, and leave the
        // `responder` (for streamed bodies) alone.
        let mut response = results.get().init_response();
        response.set_status(200);
        let mut header = response.reborrow().init_headers(1).get(0);
        header.set_name("content-type");
        header.set_value(b"text/plain; charset=utf-8");
        response.set_body(body.as_bytes());
        Ok(())
    }

    // `connect_web_socket` and `ping` keep their generated defaults, which throw
    // `unimplemented`: visitors' WebSockets then fail with 502, and to the gateway's
    // heartbeat any answer, even that one, proves the tunnel alive.
}

// One thread and a LocalSet: capnp-rpc capabilities are `!Send`.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::task::LocalSet::new().run_until(serve()).await
}

async fn serve() -> anyhow::Result<()> {
    // Kept for as long as the tunnel runs: an embedded gateway lives in this process.
    let gateway = GatewayChoice::pick(std::env::var("CAPSTAN_GATEWAY").ok()).await?;
    let fetcher: fetcher::Client = capnp_rpc::new_client(Echo);
    let tunnel = Tunnel::connect_fetcher(ClientOptions::new(gateway.url()), fetcher).await?;
    println!("{}", tunnel.url());
    tunnel
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    gateway.shutdown().await?;
    Ok(())
}
