//! WebSocket faults, limits and scale through a real gateway and tunnel: dead tunnels,
//! abrupt drops, the 1009 cap, backpressure, cleanup, 1,000 sockets, shutdown.

mod common;

use std::sync::atomic::Ordering;

use capstan_client::TunnelThread;
use common::relay::Mode;
use common::ws::{close_of, next_data, open, setup_with};
use common::*;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

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
    /// hops, the stream window and the gateway's outbound budget. Far below the flood.
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
    // The other way still flows: the tunnel's pump, stuck forwarding the flood, must not
    // hold back what the visitor sends.
    flood.send(Message::text("stop")).await.unwrap();
    assert_eq!(
        within("the visitor's message", origin.report()).await,
        "got stop"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_close_comes_after_every_message_it_sent_before() {
    const FLOOD: usize = 300; // 300 x 64 KiB: more than socket buffers, window and queue
    let origin = WsOrigin::start().await;
    let (gateway, _tunnel) = setup_with(fast_gateway_options(), &origin);
    let (mut flood, _) = open(&gateway, "ws", &format!("/flood?n={FLOOD}&close=4000"), &[])
        .await
        .unwrap();
    // A visitor slower than the tunnel, so that the gateway's queue toward it stays full
    // and the close reaches the gateway while messages still wait for room.
    let (mut other, _) = open(&gateway, "ws", "/echo", &[]).await.unwrap();
    for i in 0..FLOOD {
        other.send(Message::text("tick")).await.unwrap();
        next_data(&mut other).await;
        assert_eq!(
            next_data(&mut flood).await,
            Message::binary(pattern(i as u64, 64 * 1024)),
            "message {i}"
        );
    }
    assert_eq!(close_of(&mut flood).await, (4000, "flooded".to_owned()));
}
