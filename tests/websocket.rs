//! End-to-end WebSockets through a real gateway and tunnel: handshake, messages, order,
//! fragments and close codes. Faults, limits and scale are in `websocket_faults.rs`.

mod common;

use bytes::Bytes;
use common::ws::{close_of, next_data, open, setup_with};
use common::*;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

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
