//! The largest messages allowed, both ways, over both tunnel transports: they arrive
//! byte-exact and the tunnel's heartbeat is answered all along.

mod common;

use capstan_client::TunnelThread;
use common::ws::{next_data, open, setup_with};
use common::*;
use futures::SinkExt;
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
