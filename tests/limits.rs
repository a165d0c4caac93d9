//! Size limits as one contract: each end declares what it accepts at registration, each
//! sends within the smaller, and whatever crosses a limit anyway, either way, closes only
//! its own socket with 1009 or fails only its own request, never silently.

mod common;

use std::rc::Rc;

use bytes::Bytes;
use capstan::capstan_capnp::{fetcher, web_socket_handle};
use capstan::limits::Limits;
use capstan::websocket as ws;
use capstan_client::{LocalPort, TunnelThread};
use common::raw::RawTunnel;
use common::ws::{close_of, next_data, open};
use common::*;
use futures::SinkExt;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1 << 20;

/// `n` from a request path's `?n=N`.
fn n_of(path: &[u8]) -> usize {
    let path = std::str::from_utf8(path).unwrap();
    path.rsplit_once("n=").unwrap().1.parse().unwrap()
}

/// A raw tunnel that keeps to no limit. WebSocket `/send?n=N`: sends the visitor one
/// message of N bytes at once. GET `/inline?n=N` answers N bytes inline; `/write?n=N`
/// streams them in one `write`; a POST answers how its body came. It reports what became
/// of its sends and every message and close it got.
struct Reckless {
    reports: mpsc::Sender<String>,
    /// The largest `write` its upload sink accepts.
    chunk: usize,
}

impl fetcher::Server for Reckless {
    async fn fetch(
        self: Rc<Self>,
        params: fetcher::FetchParams,
        mut results: fetcher::FetchResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let request = params.get_request()?;
        let path = request.get_path()?;
        if request.get_method()? == "POST" {
            let how = if params.has_body() {
                let (sink, body) = capstan::body::channel(self.chunk);
                let mut pipe = params.get_body()?.pipe_to_request();
                pipe.get().set_sink(sink);
                let (piped, collected) = tokio::join!(pipe.send().promise, body.collect());
                piped?;
                let collected = collected.map_err(|e| capnp::Error::failed(e.to_string()))?;
                format!("pipeTo {}", collected.to_bytes().len())
            } else {
                format!("inline {}", request.get_body()?.len())
            };
            let mut response = results.get().init_response();
            response.set_status(200);
            response.set_body(how.as_bytes());
            return Ok(());
        }
        let n = n_of(path);
        if path.starts_with(b"/inline") {
            let mut response = results.get().init_response();
            response.set_status(200);
            response.set_body(&pattern(0, n));
            return Ok(());
        }
        let mut start = params.get_responder()?.start_request();
        start.get().init_response().set_status(200);
        let body = start.send().promise.await?.get()?.get_body()?;
        let mut write = body.write_request();
        write.get().set_data(&pattern(0, n));
        write.send().await?;
        body.end_request().send().promise.await?;
        Ok(())
    }

    async fn connect_web_socket(
        self: Rc<Self>,
        params: fetcher::ConnectWebSocketParams,
        mut results: fetcher::ConnectWebSocketResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let path = params.get_request()?.get_path()?.to_vec();
        let public = params.get_public_socket()?;
        results.get().init_response().set_status(101);
        let closed = Rc::new(tokio::sync::Notify::new());
        if path.starts_with(b"/send") {
            let (n, reports, public) = (n_of(&path), self.reports.clone(), public.clone());
            let closed = closed.clone();
            tokio::task::spawn_local(async move {
                let public = &public;
                let send =
                    |n| async move { ws::send(public, &Message::binary(pattern(0, n))).await };
                let report = |sent: Result<(), capnp::Error>| match sent {
                    Ok(()) => "ok".to_owned(),
                    Err(err) => format!("failed: {}", err.extra),
                };
                // A `-> stream` call's own promise is only flow control; the loss shows as
                // the close(1009) on our end, and every call after it throws.
                let first = report(send(n).await);
                closed.notified().await;
                let after = report(send(1).await);
                reports.send(format!("send {first}")).await.unwrap();
                reports
                    .send(format!("send after close {after}"))
                    .await
                    .unwrap();
            });
        }
        let local = Recorder(self.reports.clone(), closed, public);
        results.get().set_local_socket(capnp_rpc::new_client(local));
        Ok(())
    }
}

/// The raw tunnel's end of a socket: reports what arrives, and holds the visitor's end
/// while the gateway holds this one.
struct Recorder(
    mpsc::Sender<String>,
    Rc<tokio::sync::Notify>,
    #[allow(dead_code)] web_socket_handle::Client,
);

impl web_socket_handle::Server for Recorder {
    async fn send(
        self: Rc<Self>,
        params: web_socket_handle::SendParams,
    ) -> Result<(), capnp::Error> {
        let message = ws::read_message(params.get()?.get_message()?)?;
        let _ = self.0.send(format!("got {}", message.len())).await;
        Ok(())
    }

    async fn close(
        self: Rc<Self>,
        params: web_socket_handle::CloseParams,
        _: web_socket_handle::CloseResults,
    ) -> Result<(), capnp::Error> {
        let _ = self
            .0
            .send(format!("closed {}", params.get()?.get_code()))
            .await;
        self.1.notify_one();
        Ok(())
    }
}

/// A gateway whose WebSocket cap is `cap`, with a `Reckless` tunnel "raw" that declares
/// `limits`, and its reports.
async fn reckless(
    cap: usize,
    limits: Option<Limits>,
) -> (TestGateway, RawTunnel, Limits, mpsc::Receiver<String>) {
    let mut options = fast_gateway_options();
    options.max_ws_message = cap;
    let gateway = TestGateway::with_options(options);
    let (tx, reports) = mpsc::channel(16);
    let chunk = limits.map_or(capstan::MAX_CHUNK, |l| l.chunk);
    let (tunnel, theirs) = RawTunnel::start_with(&gateway, "raw", limits, move || Reckless {
        reports: tx,
        chunk,
    })
    .await;
    (gateway, tunnel, theirs, reports)
}

async fn report(reports: &mut mpsc::Receiver<String>) -> String {
    within("a report", reports.recv()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_message_over_the_cap_closes_its_socket_with_1009_both_ways_and_fails_the_send() {
    let (gateway, _raw, _, mut reports) = reckless(MIB, None).await;
    let (mut socket, _) = open(&gateway, "raw", &format!("/send?n={MIB}"), &[])
        .await
        .unwrap();
    let delivered = next_data(&mut socket).await;
    assert!(
        delivered == Message::binary(pattern(0, MIB)),
        "exactly the cap"
    );
    drop(socket);
    assert_eq!(report(&mut reports).await, "closed 1001");
    assert_eq!(report(&mut reports).await, "send ok");
    assert_eq!(report(&mut reports).await, "send after close ok");

    let over = MIB + 1;
    let (mut socket, _) = open(&gateway, "raw", &format!("/send?n={over}"), &[])
        .await
        .unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009);
    assert_eq!(
        report(&mut reports).await,
        "closed 1009",
        "the tunnel is told"
    );
    let _flow_control_only = report(&mut reports).await;
    let after = report(&mut reports).await;
    assert!(
        after.starts_with("send after close failed") && after.contains("message too big"),
        "the stream is broken: {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_end_learns_the_others_limits_at_registration() {
    let declared = Limits {
        ws_message: 1000,
        ..Limits::default()
    };
    let (gateway, _raw, theirs, mut reports) = reckless(MIB, Some(declared)).await;
    assert_eq!(theirs, Limits::with_ws_message(MIB), "the gateway's limits");

    // The gateway keeps to the tunnel's 1000 bytes: 1001 never crosses.
    let (mut socket, _) = open(&gateway, "raw", "/", &[]).await.unwrap();
    socket
        .send(Message::binary(pattern(0, 1000)))
        .await
        .unwrap();
    assert_eq!(report(&mut reports).await, "got 1000");
    socket
        .send(Message::binary(pattern(0, 1001)))
        .await
        .unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009);
    assert_eq!(report(&mut reports).await, "closed 1009");
}

/// Echoes at the edge of the smaller of `gateway_cap` and `tunnel_cap`, both ways, through
/// the Rust tunnel over raw TCP (`tcp`) or the WebSocket transport.
async fn agreed_edges(gateway_cap: usize, tunnel_cap: usize, tcp: bool) {
    let origin = WsOrigin::start().await;
    let mut options = fast_gateway_options();
    options.max_ws_message = gateway_cap;
    let gateway = TestGateway::with_options(options);
    let address = if tcp {
        gateway.rpc_url()
    } else {
        gateway.url()
    };
    let mut client = client_options(&address).name("ws");
    client.max_ws_message = tunnel_cap;
    let addr = origin.addr;
    let _tunnel = TunnelThread::spawn(client, move || LocalPort::new(addr.to_string())).unwrap();
    let cap = gateway_cap.min(tunnel_cap);

    let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    let message = Message::binary(pattern(1, cap));
    socket.send(message.clone()).await.unwrap();
    assert!(next_data(&mut socket).await == message, "exactly the cap");
    socket
        .send(Message::binary(pattern(0, cap + 1)))
        .await
        .unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009, "visitor to origin");
    let report = within("origin report", origin.report()).await;
    assert!(report.starts_with("closed 1009"), "{report}");

    let path = format!("/big?n={cap}");
    let (mut socket, _) = open(&gateway, "ws", &path, &[]).await.unwrap();
    assert!(next_data(&mut socket).await == Message::binary(pattern(0, cap)));
    let path = format!("/big?n={}", cap + 1);
    let (mut socket, _) = open(&gateway, "ws", &path, &[]).await.unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009, "origin to visitor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_with_the_smaller_cap_sets_it_for_both_ends() {
    agreed_edges(2 * MIB, MIB, false).await;
    agreed_edges(2 * MIB, MIB, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_the_smaller_cap_sets_it_for_both_ends() {
    agreed_edges(MIB, 2 * MIB, false).await;
    agreed_edges(MIB, 2 * MIB, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_chunk_limit_fail_only_their_request() {
    let (gateway, _raw, _, _reports) = reckless(MIB, None).await;
    let visitor = Visitor::new(gateway.addr());
    let max = capstan::MAX_CHUNK;
    for how in ["inline", "write"] {
        let (status, _, body) = visitor.get("raw", &format!("/{how}?n={max}")).await;
        assert_eq!(
            (status, body.len()),
            (StatusCode::OK, max),
            "{how} at the limit"
        );
    }
    let (status, _, body) = visitor.get("raw", &format!("/inline?n={}", max + 1)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("over the limit"),
        "{body:?}"
    );
    let request = visitor
        .request("GET", "raw", &format!("/write?n={}", max + 1))
        .body(full(Bytes::new()))
        .unwrap();
    let response = visitor.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = within("cut body", response.into_body().collect()).await;
    assert!(body.is_err(), "a refused write must cut the body: {body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_sends_uploads_within_the_tunnels_chunk_limit() {
    let declared = Limits {
        chunk: 1000,
        ..Limits::default()
    };
    let (gateway, _raw, _, _reports) = reckless(MIB, Some(declared)).await;
    let visitor = Visitor::new(gateway.addr());
    for (len, how) in [
        (1000, "inline 1000"),
        (1001, "pipeTo 1001"),
        (70_000, "pipeTo 70000"),
    ] {
        let (status, _, body) = visitor.call("POST", "raw", "/", pattern(0, len)).await;
        assert_eq!((status, body), (StatusCode::OK, Bytes::from(how)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_that_sends_a_message_over_the_cap_before_reading_still_gets_its_1009() {
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = common::ws::setup_with(fast_gateway_options(), &origin);
    let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    // Far more than the socket buffers hold: the gateway refuses it after the first
    // frame header, while the visitor is still writing. The write must complete, not be
    // reset, and the close frame must be there to read.
    let over = capstan::websocket::DEFAULT_MAX_MESSAGE + 1;
    socket
        .send(Message::binary(pattern(0, over)))
        .await
        .unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009);
}
