//! End-to-end WebSockets with Python's `websockets` as visitor and as origin, through capstan.

mod common;

use std::path::Path;

use bytes::Bytes;
use common::peer::Peer;
use common::python::{python, spawn};
use common::ws::{close_of, next_data, open};
use common::*;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_peer.py");

/// `ws_peer.py server`, with the port it listens on.
async fn server(python: &Path) -> (Peer, std::net::SocketAddr) {
    let mut peer = spawn(python, SCRIPT, &["server"]);
    let port: u16 = peer.line().await.parse().unwrap();
    (peer, ([127, 0, 0, 1], port).into())
}

/// Runs `ws_peer.py client` against tunnel `name` and returns its JSON result line.
async fn client(python: &Path, gateway: &TestGateway, name: &str, args: &[&str]) -> String {
    let (path, rest) = args.split_first().unwrap();
    let url = format!("ws://{}{path}", gateway.addr());
    let host = format!("{name}.localhost:{}", gateway.addr().port());
    let mut all = vec!["client", &url, &host];
    all.extend(rest);
    spawn(python, SCRIPT, &all).line().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_visitor_to_rust_origin() {
    let Some(python) = python() else { return };
    let origin = WsOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("ws", origin.addr);

    // /headers: the origin first tells what handshake reached it, then echoes.
    let args = [
        "/headers?from=py",
        "--protocols=chat.v1,chat.v2",
        "--headers",
        "--count=200",
        "--close",
        "1000",
        "py done",
    ];
    let result = client(python, &gateway, "ws", &args).await;
    let prefix = r#"{"subprotocol": "chat.v2", "handshake": ["/headers?from=py", "#;
    assert!(result.starts_with(prefix), "{result}");
    for header in ["sec-websocket-protocol: chat.v1, chat.v2", "x-from: python"] {
        assert!(
            result.contains(&format!("\"{header}\"")),
            "{header}: {result}"
        );
    }
    // Python offers permessage-deflate by default; that is per hop and stays at the gateway.
    assert!(!result.contains("sec-websocket-extensions"), "{result}");
    let suffix = r#""echoed": 200, "close": [1000, "py done"], "ok": true}"#;
    assert!(result.ends_with(suffix), "{result}");
    assert_eq!(
        within("report", origin.report()).await,
        "closed 1000 py done"
    );

    // The origin closes first: Python sees its code and reason.
    let args = [
        "/close?code=4002&reason=origin-bye",
        "--expect-close",
        "4002",
        "origin-bye",
    ];
    let result = client(python, &gateway, "ws", &args).await;
    let expected =
        r#"{"subprotocol": null, "echoed": 0, "close": [4002, "origin-bye"], "ok": true}"#;
    assert_eq!(result, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_visitor_to_python_origin() {
    let Some(python) = python() else { return };
    let (mut origin, addr) = server(python).await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("py", addr);

    let (mut socket, response) = open(
        &gateway,
        "py",
        "/",
        &[("sec-websocket-protocol", "chat.v1, chat.v2")],
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    for message in [
        Message::text("héllo ✓ 🦀"),
        Message::binary(pattern(3, 100_000)),
        Message::binary(Bytes::new()),
        Message::text(""),
    ] {
        socket.send(message.clone()).await.unwrap();
        assert_eq!(next_data(&mut socket).await, message);
    }
    let frame = CloseFrame {
        code: CloseCode::from(4000),
        reason: "rust says bye".into(),
    };
    socket.send(Message::Close(Some(frame))).await.unwrap();
    let echoed = close_of(&mut socket).await;
    assert_eq!(echoed, (4000, "rust says bye".to_owned()));
    assert_eq!(origin.line().await, "closed 4000 rust says bye");

    // Python closes first; no subprotocol offered, none chosen.
    let (mut socket, response) = open(&gateway, "py", "/", &[]).await.unwrap();
    assert!(!response.headers().contains_key("sec-websocket-protocol"));
    socket.send(Message::text("please close")).await.unwrap();
    let close = close_of(&mut socket).await;
    assert_eq!(close, (4001, "py-bye".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_visitor_to_python_origin() {
    let Some(python) = python() else { return };
    let (mut origin, addr) = server(python).await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("py", addr);

    let args = [
        "/",
        "--protocols=chat.v1,chat.v2",
        "--count=50",
        "--close",
        "1000",
        "done",
    ];
    let result = client(python, &gateway, "py", &args).await;
    let expected =
        r#"{"subprotocol": "chat.v2", "echoed": 50, "close": [1000, "done"], "ok": true}"#;
    assert_eq!(result, expected);
    assert_eq!(origin.line().await, "closed 1000 done");
}
