//! pycapnp peers against capstan: Python tunnel, Python gateway, and an extended schema.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use capstan_client::origin::{Handshake, OriginBody, RequestBody};
use capstan_client::{LocalPort, Origin, OriginError, TunnelThread};
use common::python::{python, spawn, Transport};
use common::ws::{close_of, next_data, open};
use common::*;
use futures::SinkExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const TUNNEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/capnp_tunnel.py");
const GATEWAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/capnp_gateway.py");

/// One mixed message of the visitor's exchange: every third binary, the rest text.
fn mixed(i: usize) -> Message {
    if i % 3 == 0 {
        Message::binary(pattern(i as u64, i * 37 % 3000))
    } else {
        Message::text(format!("visitor {i} héllo ✓ 🦀 {}", "y".repeat(i)))
    }
}

/// Real visitors through the Rust gateway to `capnp_tunnel.py`, dialed over `transport`.
async fn python_tunnel(extended: bool, transport: Transport) {
    let Some(python) = python() else { return };
    let gateway = TestGateway::start();
    let name = if extended { "pyext" } else { "pytun" };
    let mut args = vec![transport.url(&gateway), name.to_owned()];
    if extended {
        args.push("--extended".to_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tunnel = spawn(python, TUNNEL, &args);
    let port = gateway.addr().port();
    assert_eq!(
        tunnel.line().await,
        format!("http://{name}.localhost:{port}")
    );
    let visitor = Visitor::new(gateway.addr());

    // Inline both ways. The extended tunnel reads the gateway's older Request: priority 0.
    let (status, headers, body) = visitor.get(name, "/hello?x=1").await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(headers["x-served-by"], "pycapnp");
    let priority = if extended { "0" } else { "none" };
    let expected =
        format!("GET /hello?x=1\nhost: ['{name}.localhost:{port}']\npriority: {priority}\n");
    assert_eq!(body, expected);

    // A streamed response: Responder.start, then ByteStream writes from Python.
    let n = 3_000_000;
    let path = format!("/stream?n={n}");
    let (status, headers, body) = within("download", visitor.get(name, &path)).await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("content-length"), "{headers:?}");
    assert_eq!(body.len(), n);
    assert_eq!(Fnv::of(&body), pattern_hash(n as u64), "bytes differ");

    // A small body goes inline; a chunked one streams through BodySource.pipeTo.
    let small = pattern(0, 1000);
    let (status, headers, body) = visitor.call("POST", name, "/upload", small.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-body"], "inline");
    assert_eq!(body, format!("1000 {:016x}", Fnv::of(&small)));
    let len = 2_000_003u64;
    let chunks = (0..len).step_by(50_000).map(move |offset| {
        let n = (len - offset).min(50_000) as usize;
        Ok::<_, std::io::Error>(Frame::data(pattern(offset, n)))
    });
    let upload = StreamBody::new(futures::stream::iter(chunks)).boxed();
    let request = visitor
        .request("POST", name, "/upload")
        .body(upload)
        .unwrap();
    let (parts, body) = within("upload", visitor.send(request)).await.into_parts();
    let body = within("upload answer", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-body"], "pipeTo");
    assert_eq!(body, format!("{len} {:016x}", pattern_hash(len)));

    // WebSocket: 100 mixed messages pipelined, echoed in order by Python's handles.
    let (mut socket, response) = open(&gateway, name, "/echo", &[]).await.unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..100 {
        socket.feed(mixed(i)).await.unwrap();
    }
    socket.flush().await.unwrap();
    for i in 0..100 {
        assert_eq!(next_data(&mut socket).await, mixed(i), "echo {i}");
    }
    let frame = CloseFrame {
        code: CloseCode::from(4000),
        reason: "rust-bye".into(),
    };
    socket.send(Message::Close(Some(frame))).await.unwrap();
    assert_eq!(close_of(&mut socket).await, (4000, "rust-bye".to_owned()));
    assert_eq!(tunnel.line().await, "ws closed 4000 rust-bye");

    // Python closes first; the visitor's answering close comes back to it.
    let (mut socket, _) = open(&gateway, name, "/close-me", &[]).await.unwrap();
    socket.send(Message::text("close me")).await.unwrap();
    let close = close_of(&mut socket).await;
    assert_eq!(close, (4003, "py-tunnel-bye".to_owned()));
    assert_eq!(tunnel.line().await, "ws closed 4003 py-tunnel-bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tunnel_behind_rust_gateway() {
    python_tunnel(false, Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tunnel_over_a_websocket_behind_rust_gateway() {
    python_tunnel(false, Transport::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tunnel_with_extended_schema_behind_rust_gateway() {
    python_tunnel(true, Transport::Tcp).await;
}

/// `TestOrigin` for HTTP and `WsOrigin` for WebSockets, behind one tunnel.
struct SplitOrigin {
    http: LocalPort,
    ws: LocalPort,
}

impl Origin for SplitOrigin {
    fn serve(
        &self,
        request: http::Request<RequestBody>,
    ) -> impl Future<Output = Result<http::Response<OriginBody>, OriginError>> + 'static {
        self.http.serve(request)
    }

    fn connect_websocket(
        &self,
        request: http::Request<()>,
        max_message: usize,
    ) -> impl Future<Output = Result<Handshake, OriginError>> + 'static {
        self.ws.connect_websocket(request, max_message)
    }

    fn describe(&self) -> String {
        format!("{} + ws {}", self.http.describe(), self.ws.describe())
    }
}

/// The Rust tunnel registers at `capnp_gateway.py`, which then calls its `Fetcher`.
async fn python_gateway(extended: bool) {
    let Some(python) = python() else { return };
    let origin = TestOrigin::start().await;
    let ws_origin = WsOrigin::start().await;
    let args: &[&str] = if extended { &["--extended"] } else { &[] };
    let mut gateway = spawn(python, GATEWAY, args);
    let port: u16 = gateway.line().await.parse().unwrap();

    let mut options = client_options(&format!("tcp://127.0.0.1:{port}")).name("pyside");
    // Fast, so that Python sees Registration.ping within the test.
    options.heartbeat_interval = Duration::from_millis(100);
    let (http, ws): (SocketAddr, SocketAddr) = (origin.addr, ws_origin.addr);
    let spawn = tokio::task::spawn_blocking(move || {
        TunnelThread::spawn(options, move || SplitOrigin {
            http: LocalPort::new(http.to_string()),
            ws: LocalPort::new(ws.to_string()),
        })
    });
    let tunnel = within("registration", spawn).await.unwrap().unwrap();
    assert_eq!(tunnel.url(), "http://pyside.python.invalid");
    assert_eq!(tunnel.name(), "pyside");

    let report = gateway.line().await;
    let stats = if extended {
        r#""stats": "UNIMPLEMENTED", "#
    } else {
        ""
    };
    let echo = "GET /echo?from=py\\nhost: pyside.python.invalid\\nbody: \\n";
    let download = format!(
        r#"{{"inline": false, "status": 200, "length": 1048576, "hash": "{:016x}", "ordered": true, "ended": true, "chunks_ok": true}}"#,
        pattern_hash(1 << 20)
    );
    let upload = format!("1500007 {:016x}", pattern_hash(1_500_007));
    let expected = format!(
        r#"{{{stats}"echo": [200, "{echo}"], "download": {download}, "upload": [200, "{upload}", 1], "ws_echo": {{"status": 101, "echoed": 100}}, "ws_close": {{"status": 101, "echoed": 0, "origin_close": [4002, "origin-bye"]}}, "pings": "both ways"}}"#
    );
    assert_eq!(report, expected);
    assert_eq!(origin.arrival().await, "sink: started");
    assert_eq!(origin.arrival().await, "sink: 1500007 bytes");
    assert_eq!(
        within("ws report", ws_origin.report()).await,
        "closed 1000 py done"
    );

    tokio::task::spawn_blocking(move || tunnel.shutdown().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_tunnel_registers_at_python_gateway() {
    python_gateway(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_gateway_with_extended_schema_calls_rust_tunnel() {
    python_gateway(true).await;
}
