//! Serving from Rust with no local port: an axum app, a Cap'n Proto capability over a
//! tunneled WebSocket, and a gateway that is itself behind a tunnel.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use axum::extract::ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::example_capnp::counter;
use capstan::transport::{rpc_system, WebSocketIo};
use capstan_client::{CapabilityOrigin, ServiceOrigin, TunnelThread};
use common::*;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn app() -> Router {
    async fn echo(mut socket: WebSocket) {
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                AxumMessage::Text(text) => {
                    AxumMessage::Text(format!("axum: {}", text.as_str()).into())
                }
                AxumMessage::Binary(data) => AxumMessage::Binary(data),
                AxumMessage::Close(_) => return,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                return;
            }
        }
    }
    Router::new()
        .route("/", get(|| async { "hello from axum" }))
        .route(
            "/ws",
            get(|upgrade: WebSocketUpgrade| async { upgrade.on_upgrade(echo) }),
        )
}

async fn visit_ws(
    gateway: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{gateway}{path}")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("host", host.parse().unwrap());
    within("ws connect", tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_axum_app_serves_http_and_websockets_with_no_port() {
    let gateway = TestGateway::start();
    let _tunnel = TunnelThread::spawn(client_options(&gateway.url()).name("axum"), || {
        ServiceOrigin::new(app())
    })
    .unwrap();
    let (status, _, body) = Visitor::new(gateway.addr()).get("axum", "/").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, Bytes::from("hello from axum"))
    );

    let host = format!("axum.localhost:{}", gateway.addr().port());
    let mut socket = visit_ws(gateway.addr(), &host, "/ws").await;
    socket.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        within("reply", socket.next()).await.unwrap().unwrap(),
        Message::text("axum: hi")
    );
    socket
        .send(Message::binary(pattern(0, 300_000)))
        .await
        .unwrap();
    assert_eq!(
        within("reply", socket.next()).await.unwrap().unwrap(),
        Message::binary(pattern(0, 300_000))
    );
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capnp_capability_is_reachable_through_a_tunneled_websocket() {
    let gateway = TestGateway::start();
    let _tunnel = TunnelThread::spawn(client_options(&gateway.url()).name("calc"), || {
        CapabilityOrigin::new(|| {
            capnp_rpc::new_client::<counter::Client, _>(Counter(Cell::new(0))).client
        })
    })
    .unwrap();

    // A remote Rust program: WebSocket to the public URL, capnp over its messages.
    let host = format!("calc.localhost:{}", gateway.addr().port());
    let socket = visit_ws(gateway.addr(), &host, "/").await;
    let local = tokio::task::LocalSet::new();
    let totals = local
        .run_until(async move {
            let mut rpc = rpc_system(WebSocketIo::new(socket), Side::Client, None);
            let counter: counter::Client = rpc.bootstrap(Side::Server);
            let _rpc = tokio::task::spawn_local(rpc);
            let mut totals = Vec::new();
            for delta in [2, 3, -10] {
                let mut request = counter.add_request();
                request.get().set_delta(delta);
                let response = within("add", request.send().promise).await.unwrap();
                totals.push(response.get().unwrap().get_total());
            }
            totals
        })
        .await;
    assert_eq!(totals, [2, 5, -5], "one live counter per connection");

    // Plain HTTP to the same URL says what is there.
    let (status, _, _) = Visitor::new(gateway.addr()).get("calc", "/").await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_behind_another_tunnel_carries_http_and_websockets() {
    // inner: gateway + tunnel to the app. outer: gateway + tunnel to the inner gateway.
    let origin = TestOrigin::start().await;
    let ws_origin = WsOrigin::start().await;
    let mut inner_options = fast_gateway_options();
    inner_options.domain = "inner.test".into();
    inner_options.bare_to_single_tunnel = true;
    // The inner gateway sits behind the outer one, which sets X-Forwarded-For.
    inner_options.trust_forwarded = true;
    let inner = TestGateway::with_options(inner_options);
    let _app = inner.tunnel("app", origin.addr);
    let outer = TestGateway::start();
    let _hop = outer.tunnel("outer", inner.addr());

    let visitor = Visitor::new(outer.addr());
    let (status, _, body) = visitor.get("outer", "/echo?via=two-tunnels").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("GET /echo?via=two-tunnels\n"), "{text}");
    // Each gateway added the address it saw.
    assert!(
        text.contains("x-forwarded-for: 127.0.0.1, 127.0.0.1\n"),
        "{text}"
    );
    let (_, _, body) = visitor
        .call("POST", "outer", "/sink", pattern(0, 200_000))
        .await;
    assert_eq!(body, format!("200000 {:016x}", pattern_hash(200_000)));

    // WebSockets: swap the inner app for a WebSocket origin.
    drop(_app);
    // The bare address routes only while exactly one tunnel is live.
    within(
        "app gone",
        inner.thread.counters().sessions.wait_for(|n| *n == 0),
    )
    .await;
    let _ws_app = inner.tunnel("wsapp", ws_origin.addr);
    let host = format!("outer.localhost:{}", outer.addr().port());
    let mut socket = visit_ws(outer.addr(), &host, "/echo").await;
    for i in 0..20 {
        let message = if i % 2 == 0 {
            Message::text(format!("nested {i}"))
        } else {
            Message::binary(pattern(i, 10_000))
        };
        socket.send(message.clone()).await.unwrap();
        assert_eq!(
            within("nested echo", socket.next()).await.unwrap().unwrap(),
            message
        );
    }
    socket.close(None).await.unwrap();
    let report = within("origin report", ws_origin.report()).await;
    assert_eq!(report, "closed 1005 ");
}
