//! The largest messages and bodies allowed, both ways, over both tunnel transports and all
//! at once: they arrive byte-exact and the tunnel's heartbeat is answered all along.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use capstan_client::TunnelThread;
use common::ws::{next_data, open, setup_with};
use common::*;
use futures::SinkExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_tungstenite::tungstenite::Message;

/// 1 MiB, the sizes that once stalled the WebSocket transport, and just under the 16 MiB cap.
const SIZES: [usize; 4] = [1 << 20, 6_000_000, 8 << 20, 15_900_000];

/// Echoes each of [`SIZES`] through tunnel "ws" and checks the bytes; a bystander socket
/// on the same tunnel must still answer afterwards, and the tunnel must never reconnect.
async fn echo_the_largest(gateway: &TestGateway, tunnel: &TunnelThread) {
    let (mut bystander, _) = open(gateway, "ws", "/echo", &[]).await.unwrap();
    let (mut socket, _) = open(gateway, "ws", "/echo", &[]).await.unwrap();
    for n in SIZES {
        let message = Message::binary(pattern(n as u64, n));
        socket.send(message.clone()).await.unwrap();
        let echoed = next_data(&mut socket).await;
        // Not assert_eq!: a failure would print 16 MB.
        assert!(echoed == message, "the echo of {n} bytes differs");
    }
    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut bystander).await, Message::text("still here"));
    assert_eq!(
        *tunnel.registrations().borrow(),
        1,
        "the tunnel reconnected"
    );
    assert_eq!(gateway.thread.counters().sessions.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_messages_cross_the_websocket_transport() {
    let origin = WsOrigin::start().await;
    let (gateway, tunnel) = setup_with(fast_gateway_options(), &origin);
    echo_the_largest(&gateway, &tunnel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_messages_cross_the_tcp_transport() {
    let origin = WsOrigin::start().await;
    let gateway = TestGateway::start();
    let tunnel = tunnel_via(&gateway.rpc_url(), "ws", origin.addr);
    echo_the_largest(&gateway, &tunnel).await;
}

/// One origin port for both fixtures: WebSocket upgrades go to `ws`, the rest to `http`.
async fn splitter(http: SocketAddr, ws: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut visitor, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The head arrives in one segment on loopback; peek at it.
                let mut head = [0u8; 2048];
                let n = visitor.peek(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                let to = if head.contains("upgrade: websocket") {
                    ws
                } else {
                    http
                };
                let mut origin = tokio::net::TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut visitor, &mut origin).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_is_answered_under_the_heaviest_load_both_ways_at_once() {
    const LEN: u64 = 100 << 20;
    const FLOOD: usize = 200; // 64 KiB each
    let (http, ws) = (TestOrigin::start().await, WsOrigin::start().await);
    let origin = splitter(http.addr, ws.addr).await;
    let gateway = TestGateway::start(); // heartbeat every 250 ms, dropped after 2 s
    let tunnel = gateway.tunnel("mix", origin);
    let visitor = Visitor::new(gateway.addr());

    let upload = async {
        let chunks = (0..LEN)
            .step_by(1 << 20)
            .map(|offset| Ok::<_, std::io::Error>(Frame::data(pattern(offset, 1 << 20))));
        let body = StreamBody::new(futures::stream::iter(chunks)).boxed();
        let request = visitor.request("POST", "mix", "/sink").body(body).unwrap();
        let response = visitor.send(request).await;
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answer, format!("{LEN} {:016x}", pattern_hash(LEN)));
    };
    let download = async {
        let request = visitor.request("GET", "mix", &format!("/download?n={LEN}&cl=1"));
        let response = visitor
            .send(request.body(full(bytes::Bytes::new())).unwrap())
            .await;
        let mut body = response.into_body();
        let (mut len, mut fnv) = (0u64, Fnv::default());
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.unwrap().data_ref() {
                len += data.len() as u64;
                fnv.update(data);
            }
        }
        assert_eq!((len, fnv.0), (LEN, pattern_hash(LEN)));
    };
    let flood = async {
        let path = format!("/flood?n={FLOOD}");
        let (mut socket, _) = open(&gateway, "mix", &path, &[]).await.unwrap();
        for i in 0..FLOOD {
            // A visitor that reads slowly: the flood must wait for it, not the tunnel.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let expected = Message::binary(pattern(i as u64, 64 * 1024));
            assert!(
                next_data(&mut socket).await == expected,
                "flood message {i}"
            );
        }
    };
    let largest = async {
        let (mut socket, _) = open(&gateway, "mix", "/echo", &[]).await.unwrap();
        let message = Message::binary(pattern(7, 15_900_000));
        for _ in 0..3 {
            socket.send(message.clone()).await.unwrap();
            assert!(next_data(&mut socket).await == message, "the largest echo");
        }
    };
    let all = async { tokio::join!(upload, download, flood, largest) };
    tokio::time::timeout(Duration::from_secs(180), all)
        .await
        .expect("the mixed load finishes");
    assert_eq!(
        *tunnel.registrations().borrow(),
        1,
        "the tunnel reconnected"
    );
    assert_eq!(gateway.thread.counters().sessions.get(), 1);
}
