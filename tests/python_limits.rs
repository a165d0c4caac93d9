//! The WebSocket message cap through `capnp_tunnel.py`, over both tunnel transports: the
//! largest messages cross byte-exact without costing the tunnel its heartbeat, and one
//! message over the cap, from either side, closes only its own socket with 1009.

mod common;

use std::path::Path;

use common::peer::Peer;
use common::python::{python, spawn, Transport};
use common::ws::{close_of, next_data, open, Socket};
use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const TUNNEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/capnp_tunnel.py");

/// The gateway's default cap on one WebSocket message, each way.
const CAP: usize = capstan::websocket::DEFAULT_MAX_MESSAGE;

/// 1 MiB, the sizes that once stalled the WebSocket transport, and just under the cap.
const SIZES: [usize; 4] = [1 << 20, 6_000_000, 8 << 20, 15_900_000];

/// A gateway, and `capnp_tunnel.py` registered at it as "py" over `transport`.
async fn setup(python: &Path, transport: Transport) -> (TestGateway, Peer) {
    let gateway = TestGateway::start();
    let mut tunnel = spawn(python, TUNNEL, &[&transport.url(&gateway), "py"]);
    let url = format!("http://py.localhost:{}", gateway.addr().port());
    assert_eq!(tunnel.line().await, url);
    (gateway, tunnel)
}

/// A visitor's socket to `path` on tunnel "py".
async fn visit(gateway: &TestGateway, path: &str) -> Socket {
    open(gateway, "py", path, &[]).await.unwrap().0
}

/// Checks that the next message on `socket` is `n` pattern bytes from `offset`.
async fn receive(socket: &mut Socket, offset: u64, n: usize) {
    let received = next_data(socket).await;
    // Not assert_eq!: a failure would print 16 MB.
    assert!(
        received == Message::binary(pattern(offset, n)),
        "the {n} bytes differ"
    );
}

/// Sends `n` pattern bytes and checks that the echo is byte-exact.
async fn echo(socket: &mut Socket, n: usize) {
    let message = Message::binary(pattern(n as u64, n));
    socket.send(message).await.unwrap();
    receive(socket, n as u64, n).await;
}

/// Sends `message`, which the gateway refuses, and returns the visitor's close code. The
/// gateway stops reading mid-message and then drops the connection, so the send may fail
/// with a reset; the close frame comes first, but only to a visitor that reads meanwhile.
async fn refused(socket: Socket, message: Message) -> u16 {
    let (mut sink, mut stream) = socket.split();
    let close = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map_or(1005, |f| f.code.into()),
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    within("close frame", async {
        tokio::join!(sink.send(message), close).1
    })
    .await
}

/// Asserts that the next stdout lines of the tunnel start with `prefixes`, in any order.
async fn lines_start_with(tunnel: &mut Peer, prefixes: &[&str]) {
    let mut lines = Vec::new();
    for _ in prefixes {
        lines.push(tunnel.line().await);
    }
    for prefix in prefixes {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "{prefix}: {lines:?}"
        );
    }
}

/// Asserts that `bystander` still echoes.
async fn still_echoes(bystander: &mut Socket) {
    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(bystander).await, Message::text("still here"));
}

/// Each of [`SIZES`] echoes byte-exact; the tunnel keeps its one connection all along.
async fn the_largest_messages_echo(transport: Transport) {
    let Some(python) = python() else { return };
    let (gateway, _tunnel) = setup(python, transport).await;
    let mut bystander = visit(&gateway, "/echo").await;
    let mut socket = visit(&gateway, "/echo").await;
    for n in SIZES {
        echo(&mut socket, n).await;
    }
    still_echoes(&mut bystander).await;
    // The Python tunnel never reconnects: a dropped connection would leave 0.
    assert_eq!(gateway.thread.counters().sessions.get(), 1);
}

/// From the tunnel: a message of exactly the cap is delivered and its `send` resolves; a
/// bigger one fails its `send` and closes both ends of its socket with 1009.
async fn the_cap_from_the_tunnel(transport: Transport) {
    let Some(python) = python() else { return };
    let (gateway, mut tunnel) = setup(python, transport).await;
    let mut bystander = visit(&gateway, "/echo").await;
    let mut at_cap = visit(&gateway, &format!("/send?n={CAP}")).await;
    receive(&mut at_cap, 0, CAP).await;
    assert_eq!(tunnel.line().await, format!("send {CAP} ok"));

    // One byte over, and the size of the report (once the first to overflow the
    // gateway's socket buffers; the ones between slipped through).
    for over in [CAP + 1, CAP + 5111] {
        let mut socket = visit(&gateway, &format!("/send?n={over}")).await;
        assert_eq!(close_of(&mut socket).await.0, 1009);
        let failed = format!("send {over} failed: ");
        lines_start_with(&mut tunnel, &[&failed, "ws closed 1009"]).await;
    }
    still_echoes(&mut bystander).await;
}

/// From the visitor: a message of exactly the cap is echoed; one byte more closes both
/// ends of its socket with 1009.
async fn the_cap_from_the_visitor(transport: Transport) {
    let Some(python) = python() else { return };
    let (gateway, mut tunnel) = setup(python, transport).await;
    let mut socket = visit(&gateway, "/echo").await;
    echo(&mut socket, CAP).await;
    let code = refused(socket, Message::binary(pattern(0, CAP + 1))).await;
    assert_eq!(code, 1009);
    lines_start_with(&mut tunnel, &["ws closed 1009"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_messages_echo_over_tcp() {
    the_largest_messages_echo(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_messages_echo_over_a_websocket() {
    the_largest_messages_echo(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_from_the_tunnel_over_tcp() {
    the_cap_from_the_tunnel(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_from_the_tunnel_over_a_websocket() {
    the_cap_from_the_tunnel(Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_from_the_visitor_over_tcp() {
    the_cap_from_the_visitor(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_from_the_visitor_over_a_websocket() {
    the_cap_from_the_visitor(Transport::WebSocket).await;
}
