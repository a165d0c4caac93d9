//! End-to-end WebSockets through a real gateway and tunnel: handshake, messages, order,
//! close codes, limits, backpressure, cleanup and scale.

mod common;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use capstan_client::TunnelThread;
use common::relay::Mode;
use common::ws::{close_of, next_data, open};
use common::*;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

fn setup_with(
    options: capstan_gateway::GatewayOptions,
    origin: &WsOrigin,
) -> (TestGateway, TunnelThread) {
    let gateway = TestGateway::with_options(options);
    let tunnel = gateway.tunnel("ws", origin.addr);
    (gateway, tunnel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_headers_subprotocol_and_messages_cross_byte_exact() {
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    let headers = [
        ("cookie", "session=abc"),
        ("authorization", "Bearer t0k"),
        ("origin", "https://app.example"),
        ("x-custom", "42"),
        ("sec-websocket-protocol", "chat.v1, chat.v2"),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
    ];
    let (mut socket, response) = open(&gateway, "ws", "/headers?room=7", &headers)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    assert_eq!(response.headers()["set-cookie"], "ws=1");
    // permessage-deflate is per hop, and this hop does not offer it.
    assert!(!response.headers().contains_key("sec-websocket-extensions"));

    let Message::Text(seen) = next_data(&mut socket).await else {
        panic!("expected text")
    };
    let seen = seen.as_str();
    assert!(seen.starts_with("/headers?room=7\n"), "{seen}");
    for line in [
        "cookie: session=abc",
        "authorization: Bearer t0k",
        "origin: https://app.example",
        "x-custom: 42",
        "sec-websocket-protocol: chat.v1, chat.v2",
    ] {
        assert!(seen.lines().any(|l| l == line), "{line} missing in {seen}");
    }
    // permessage-deflate is per hop: the visitor's offer never reaches the origin.
    assert!(!seen.contains("sec-websocket-extensions"), "{seen}");

    socket.send(Message::text("héllo ✓")).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Message::text("héllo ✓"));
    let binary = pattern(7, 100_000);
    socket.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Message::binary(binary));
    socket.send(Message::binary(Bytes::new())).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Message::binary(Bytes::new()));
    socket.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_gets_the_origins_answer_at_once() {
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    for (path, status, body) in [
        ("/refuse", StatusCode::FORBIDDEN, "forbidden here"),
        ("/plain", StatusCode::OK, "just a page"),
    ] {
        match within("refusal", open(&gateway, "ws", path, &[])).await {
            Err(WsError::Http(response)) => {
                assert_eq!(
                    response.status(),
                    status,
                    "{path}: {:?}",
                    response
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                );
                assert_eq!(response.headers()["x-refused"], "yes");
                assert_eq!(response.body().as_deref(), Some(body.as_bytes()), "{path}");
            }
            other => panic!("{path}: expected a refusal, got {other:?}"),
        }
    }
    // Nothing listening: 502 naming the port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _dead_tunnel = gateway.tunnel("dead", dead);
    match within("dead origin", open(&gateway, "dead", "/", &[])).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
            let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
            assert!(body.contains(&dead.port().to_string()), "{body}");
        }
        other => panic!("expected 502, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_pipelined_mixed_messages_keep_their_order() {
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    let (socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    let (mut sink, mut stream) = socket.split();
    let message = |i: usize| {
        if i % 3 == 0 {
            Message::binary(pattern(i as u64, 1 + i * 37 % 5000))
        } else {
            Message::text(format!("message {i} {}", "x".repeat(i % 300)))
        }
    };
    const N: usize = 600;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            sink.send(message(i)).await.unwrap();
        }
        sink
    });
    for i in 0..N {
        let got = within("echo", stream.next()).await.unwrap().unwrap();
        assert_eq!(got, message(i), "message {i}");
    }
    let mut sink = sender.await.unwrap();
    sink.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_and_reasons_cross_both_ways() {
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    for code in [1000u16, 1001, 1008, 3000, 4999] {
        let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
        let reason = format!("visitor says {code}");
        socket
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.clone().into(),
            }))
            .await
            .unwrap();
        assert_eq!(
            within("origin report", origin.report()).await,
            format!("closed {code} {reason}")
        );

        let path = format!("/close?code={code}&reason=origin-{code}");
        let (mut socket, _) = open(&gateway, "ws", &path, &[]).await.unwrap();
        assert_eq!(
            close_of(&mut socket).await,
            (code, format!("origin-{code}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_tunnel_closes_its_visitors_with_1001_and_leaks_nothing() {
    let origin = WsOrigin::start().await;
    let gateway = TestGateway::start();
    let relay = Relay::start(gateway.addr()).await;
    let tunnel = tunnel_via(&relay.url(), "ws", origin.addr);
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
        socket.send(Message::text("up")).await.unwrap();
        assert_eq!(next_data(&mut socket).await, Message::text("up"));
        sockets.push(socket);
    }
    relay.set(Mode::Cut);
    for socket in &mut sockets {
        assert_eq!(close_of(socket).await.0, 1001);
    }
    let counters = gateway.thread.counters();
    within(
        "gateway sockets gone",
        counters.websockets.wait_for(|n| *n == 0),
    )
    .await;
    within(
        "gateway handles gone",
        counters.socket_handles.wait_for(|n| *n == 0),
    )
    .await;
    drop(tunnel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_visitor_drop_is_a_clean_close_at_the_origin() {
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    socket.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Message::text("hi"));
    drop(socket); // TCP close without a close frame.
    let report = within("origin report", origin.report()).await;
    assert!(report.starts_with("closed 1001"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_only_its_socket_with_1009() {
    const CAP: usize = 1 << 20;
    let origin = WsOrigin::start().await;
    let mut options = fast_gateway_options();
    options.max_ws_message = CAP;
    let gateway = TestGateway::with_options(options);
    let mut client = client_options(&gateway.url()).name("ws");
    client.max_ws_message = CAP;
    let addr = origin.addr;
    let _tunnel = TunnelThread::spawn(client, move || {
        capstan_client::LocalPort::new(addr.to_string())
    })
    .unwrap();

    let (mut bystander, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    // Exactly the cap passes, byte-exact.
    let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    socket.send(Message::binary(pattern(0, CAP))).await.unwrap();
    assert_eq!(
        next_data(&mut socket).await,
        Message::binary(pattern(0, CAP))
    );
    // One byte more from the visitor: 1009 to the visitor and to the origin.
    socket
        .send(Message::binary(pattern(0, CAP + 1)))
        .await
        .unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009);
    let report = within("origin report", origin.report()).await;
    assert!(report.starts_with("closed 1009"), "{report}");
    // One byte more from the origin: 1009 to the visitor.
    let (mut socket, _) = open(&gateway, "ws", &format!("/big?n={}", CAP + 1), &[])
        .await
        .unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1009);

    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut bystander).await, Message::text("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_that_does_not_read_slows_only_its_own_socket() {
    const FLOOD: usize = 2000; // 2000 x 64 KiB = 125 MiB
    /// Messages that may sit between origin and visitor: socket buffers on three TCP
    /// hops, the stream window and two channel slots. Far below the flood.
    const BOUND: usize = 640; // 40 MiB
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    let (mut flood, _) = open(&gateway, "ws", &format!("/flood?n={FLOOD}"), &[])
        .await
        .unwrap();

    let (mut other, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    for i in 0..50 {
        other
            .send(Message::text(format!("ping {i}")))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut other).await,
            Message::text(format!("ping {i}"))
        );
    }
    let sent = origin.flooded.load(Ordering::SeqCst);
    assert!(
        sent < BOUND,
        "the origin got {sent} messages out to a visitor reading none"
    );

    for i in 0..FLOOD {
        let message = next_data(&mut flood).await;
        assert_eq!(
            message,
            Message::binary(pattern(i as u64, 64 * 1024)),
            "message {i}"
        );
        let sent = origin.flooded.load(Ordering::SeqCst);
        assert!(
            sent <= i + 1 + BOUND,
            "{sent} sent with only {} read",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_open_close_cycles_leave_nothing_behind() {
    let origin = WsOrigin::start().await;
    let (gateway, tunnel) = setup_with(fast_gateway_options(), &origin);
    for i in 0..100 {
        let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
        socket.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next_data(&mut socket).await, Message::text(format!("{i}")));
        socket.close(None).await.unwrap();
        assert_eq!(close_of(&mut socket).await.0, 1005);
    }
    let gateway_counters = gateway.thread.counters();
    let tunnel_counters = tunnel.counters();
    within(
        "gateway pumps",
        gateway_counters.websockets.wait_for(|n| *n == 0),
    )
    .await;
    within(
        "gateway handles",
        gateway_counters.socket_handles.wait_for(|n| *n == 0),
    )
    .await;
    within(
        "tunnel pumps",
        tunnel_counters.websockets.wait_for(|n| *n == 0),
    )
    .await;
    within(
        "tunnel handles",
        tunnel_counters.socket_handles.wait_for(|n| *n == 0),
    )
    .await;
    assert_eq!(gateway_counters.sessions.get(), 1, "one tunnel connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sockets_through_one_tunnel_without_crosstalk() {
    const SOCKETS: usize = 1000;
    let origin = WsOrigin::start().await;
    let mut options = fast_gateway_options();
    options.max_inflight_per_tunnel = SOCKETS;
    let (gateway, tunnel) = setup_with(options, &origin);
    let gateway = std::sync::Arc::new(gateway);
    let mut sockets = Vec::with_capacity(SOCKETS);
    // Open in waves so that the accept backlog never overflows.
    for wave in 0..SOCKETS / 100 {
        let opened = futures::future::join_all((0..100).map(|_| {
            let gateway = gateway.clone();
            async move { open(&gateway, "ws", "/echo", &[]).await.unwrap().0 }
        }))
        .await;
        sockets.extend(opened);
        assert_eq!(sockets.len(), (wave + 1) * 100);
    }
    assert_eq!(gateway.thread.counters().websockets.get(), SOCKETS);
    let results = futures::future::join_all(sockets.iter_mut().enumerate().map(
        |(i, socket)| async move {
            let message = Message::text(format!("socket {i} says {}", i * 7919));
            socket.send(message.clone()).await.unwrap();
            assert_eq!(next_data(socket).await, message);
        },
    ))
    .await;
    assert_eq!(results.len(), SOCKETS);
    for socket in &mut sockets {
        socket.close(None).await.unwrap();
    }
    drop(sockets);
    within(
        "all closed",
        gateway.thread.counters().websockets.wait_for(|n| *n == 0),
    )
    .await;
    within(
        "tunnel side closed",
        tunnel.counters().websockets.wait_for(|n| *n == 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_are_reassembled_and_pings_stay_on_their_hop() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();

    // One text message in three frames; the origin gets (and echoes) it whole.
    for (part, opcode, last) in [
        ("frag", OpCode::Data(Data::Text), false),
        ("men", OpCode::Data(Data::Continue), false),
        ("ted ✓", OpCode::Data(Data::Continue), true),
    ] {
        socket
            .send(Message::Frame(Frame::message(part, opcode, last)))
            .await
            .unwrap();
    }
    assert_eq!(next_data(&mut socket).await, Message::text("fragmented ✓"));

    socket
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    match within("pong", socket.next()).await.unwrap().unwrap() {
        Message::Pong(payload) => assert_eq!(payload, "are you there"),
        other => panic!("expected the gateway's pong, got {other:?}"),
    }
    socket.send(Message::text("after ping")).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Message::text("after ping"));
    socket.close(None).await.unwrap();
    // The origin's first report is the close: no ping ever reached it.
    assert_eq!(
        within("origin report", origin.report()).await,
        "closed 1005 "
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_origin_drop_or_a_stopped_tunnel_is_a_1001_for_the_visitor() {
    let origin = WsOrigin::start().await;
    let (gateway, tunnel) = setup_with(fast_gateway_options(), &origin);

    let (mut socket, _) = open(&gateway, "ws", "/drop", &[]).await.unwrap();
    socket.send(Message::text("bye")).await.unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1001);

    // The tunnel process stopping (here: its thread) closes its visitors' sockets.
    let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    socket.send(Message::text("up")).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Message::text("up"));
    tokio::task::spawn_blocking(move || tunnel.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1001);
    within(
        "gateway sockets gone",
        gateway.thread.counters().websockets.wait_for(|n| *n == 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_shutdown_closes_open_sockets_with_1001() {
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    let (mut socket, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    socket.send(Message::text("up")).await.unwrap();
    assert_eq!(next_data(&mut socket).await, Message::text("up"));
    let stopping = tokio::task::spawn_blocking(move || gateway.thread.shutdown());
    assert_eq!(
        close_of(&mut socket).await,
        (1001, "gateway shutting down".to_owned())
    );
    within("gateway stop", stopping).await.unwrap().unwrap();
}
