//! Bad input and faults: each gets a clear answer and never takes down another tunnel.

mod common;

use std::time::Duration;

use bytes::Bytes;
use capstan_client::{ConnectError, LocalPort, RegisterError, Tunnel, TunnelThread};
use common::relay::Mode;
use common::*;
use futures::SinkExt;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_gets_404_naming_it() {
    let gateway = TestGateway::start();
    let visitor = Visitor::new(gateway.addr());
    let (status, _, body) = visitor.get("nobody", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(body.contains("\"nobody.localhost\""), "{body}");
    // The bare address of a standalone gateway serves no tunnel either.
    let (status, _, _) = visitor.get("", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_not_listening_gets_502_naming_the_port() {
    // Bind then drop: a port with nothing behind it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", dead);
    let visitor = Visitor::new(gateway.addr());
    let (status, _, body) = visitor.get("demo", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.contains(&format!("127.0.0.1:{}", dead.port())),
        "{body}"
    );
    assert!(body.contains("cannot reach the origin"), "{body}");
}

fn refused(result: Result<TunnelThread, ConnectError>) -> (RegisterError, String) {
    match result {
        Err(ConnectError::Refused { code, message }) => (code, message),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a tunnel"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_taken_names_and_wrong_tokens_are_refused_clearly() {
    let origin = TestOrigin::start().await;
    let mut options = fast_gateway_options();
    options.tokens = vec!["s3cret".into()];
    let gateway = TestGateway::with_options(options);
    let spawn = |name: &str, token: &str| {
        let addr = origin.addr;
        TunnelThread::spawn(
            client_options(&gateway.url()).name(name).token(token),
            move || LocalPort::new(addr.to_string()),
        )
    };

    let (code, message) = refused(spawn("demo", "wrong"));
    assert_eq!(code, RegisterError::Unauthorized);
    assert!(message.contains("token"), "{message}");
    let (code, message) = refused(spawn("demo", ""));
    assert_eq!(code, RegisterError::Unauthorized, "{message}");

    let (code, message) = refused(spawn("Bad_Name", "s3cret"));
    assert_eq!(code, RegisterError::InvalidName);
    assert!(message.contains("Bad_Name"), "{message}");

    let first = spawn("demo", "s3cret").unwrap();
    let (code, message) = refused(spawn("demo", "s3cret"));
    assert_eq!(code, RegisterError::NameTaken);
    assert!(message.contains("demo"), "{message}");

    // The refusals cost the registered tunnel nothing.
    let (status, _, body) = Visitor::new(gateway.addr()).get("demo", "/cookies").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("cookies")));
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_killed_mid_response_cuts_that_response_only() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let relay = Relay::start(gateway.addr()).await;
    let doomed = tunnel_via(&relay.url(), "doomed", origin.addr);
    let _other = gateway.tunnel("other", origin.addr);
    let visitor = Visitor::new(gateway.addr());

    let request = visitor
        .request("GET", "doomed", "/endless")
        .body(full(Bytes::new()))
        .unwrap();
    let response = within("endless head", visitor.send(request)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0;
    while received < 1 << 20 {
        let frame = within("endless body", body.frame()).await.unwrap().unwrap();
        received += frame.into_data().unwrap().len();
    }
    relay.set(Mode::Cut);
    // The visitor sees an error, never a clean end of a truncated body.
    let end = within("cut body", async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => break Ok(err),
                None => break Err("the body ended cleanly"),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "{end:?}");

    let (status, _, body) = visitor.get("other", "/cookies").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("cookies")));
    drop(doomed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_tunnel_endpoints_closes_only_that_connection() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);

    // Raw RPC port: bytes that are not a Cap'n Proto message.
    let mut raw = tokio::net::TcpStream::connect(gateway.thread.rpc_addr().unwrap())
        .await
        .unwrap();
    raw.write_all(&[0xff; 64]).await.unwrap();
    let mut sink = Vec::new();
    // Returning at all (EOF or reset) means the gateway closed the socket.
    let _ = within("rpc garbage close", raw.read_to_end(&mut sink)).await;

    // WebSocket endpoint: binary garbage, or a text message (the stream is binary only).
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://{}{}", gateway.addr(), capstan::CONNECT_PATH);
    for garbage in [
        Message::Binary(Bytes::from_static(&[0xee; 40])),
        Message::text("hello"),
    ] {
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let _ = socket.send(garbage).await;
        within("ws garbage close", async {
            use futures::StreamExt;
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }

    // Plain HTTP to the endpoint is told what it is.
    let visitor = Visitor::new(gateway.addr());
    let (status, _, body) = visitor.get("", capstan::CONNECT_PATH).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("capstan client"));

    let (status, _, _) = visitor.get("demo", "/cookies").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_tunnel_is_found_by_heartbeat_and_its_name_freed() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let relay = Relay::start(gateway.addr()).await;
    // This tunnel's own heartbeat is slow, so it does not reconnect during the test.
    let mut options = client_options(&relay.url()).name("ghost");
    options.heartbeat_interval = Duration::from_secs(60);
    options.heartbeat_timeout = Duration::from_secs(60);
    let addr = origin.addr;
    let ghost = TunnelThread::spawn(options, move || LocalPort::new(addr.to_string())).unwrap();
    let visitor = Visitor::new(gateway.addr());
    let (status, _, _) = visitor.get("ghost", "/cookies").await;
    assert_eq!(status, StatusCode::OK);

    relay.set(Mode::Freeze);
    // This request is stuck in the frozen connection until the gateway's heartbeat
    // notices (250 ms interval, 2 s timeout) and drops it.
    let (status, _, body) = within("heartbeat verdict", visitor.get("ghost", "/cookies")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");

    // The name is free for its token again.
    let reclaimed = tunnel_via(&gateway.url(), "ghost", origin.addr);
    let (status, _, _) = visitor.get("ghost", "/cookies").await;
    assert_eq!(status, StatusCode::OK);
    drop(reclaimed);
    drop(ghost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_reconnects_and_reclaims_its_name() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let relay = Relay::start(gateway.addr()).await;
    let tunnel = tunnel_via(&relay.url(), "phoenix", origin.addr);
    let mut registrations = tunnel.registrations();
    let visitor = Visitor::new(gateway.addr());

    relay.set(Mode::Cut);
    within("reconnect", registrations.wait_for(|n| *n >= 2))
        .await
        .unwrap();
    let (status, _, body) = visitor.get("phoenix", "/cookies").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("cookies")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_per_tunnel_are_bounded() {
    let origin = TestOrigin::start().await;
    let mut options = fast_gateway_options();
    options.max_inflight_per_tunnel = 2;
    let gateway = TestGateway::with_options(options);
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());

    let held: Vec<_> = (0..2)
        .map(|_| {
            let visitor = visitor.clone();
            tokio::spawn(async move { visitor.get("demo", "/hold").await })
        })
        .collect();
    for _ in 0..2 {
        within("held request", origin.arrival()).await;
    }
    let (status, headers, body) = visitor.get("demo", "/cookies").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("busy"), "{body:?}");
    assert_eq!(
        headers["retry-after"], "1",
        "never an unbounded queue: come back"
    );

    origin.gate.add_permits(2);
    for request in held {
        let (status, _, body) = within("released", request).await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("released")));
    }
    let (status, _, _) = visitor.get("demo", "/cookies").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_over_raw_tcp_rpc_serves_too() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = tunnel_via(&gateway.rpc_url(), "raw", origin.addr);
    let (status, _, body) = Visitor::new(gateway.addr()).get("raw", "/cookies").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("cookies")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_shutdown_drains_in_flight_requests() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());
    let held = {
        let visitor = visitor.clone();
        tokio::spawn(async move { visitor.get("demo", "/hold").await })
    };
    within("held request", origin.arrival()).await;
    let stopping = tokio::task::spawn_blocking(move || gateway.thread.shutdown());
    origin.gate.add_permits(1);
    let (status, _, body) = within("drained", held).await.unwrap();
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("released")));
    within("gateway stop", stopping).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_connect_reports_an_unreachable_gateway() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let result = local
        .run_until(Tunnel::connect(
            client_options(&format!("http://{dead}")),
            LocalPort::new("localhost:1"),
        ))
        .await;
    match result {
        Err(err @ ConnectError::Unreachable { .. }) => {
            assert!(err.to_string().contains(&dead.to_string()), "{err}")
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_the_visitor_aborts_the_origin_request() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);

    let mut socket = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /sink HTTP/1.1\r\nhost: demo.localhost:{}\r\ntransfer-encoding: chunked\r\n\r\n",
        gateway.addr().port()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(b"10000\r\n").await.unwrap();
    socket.write_all(&pattern(0, 0x10000)).await.unwrap();
    socket.write_all(b"\r\n").await.unwrap();
    socket.flush().await.unwrap();
    assert_eq!(
        within("upload reaches the origin", origin.arrival()).await,
        "sink: started"
    );
    drop(socket); // Mid-body: no terminating chunk.

    let outcome = within("origin sees the cut", origin.arrival()).await;
    assert!(outcome.starts_with("sink: body error"), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_connection_goes_silent_reconnects_by_itself() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let relay = Relay::start(gateway.addr()).await;
    let mut options = client_options(&relay.url()).name("quiet");
    options.heartbeat_interval = Duration::from_millis(250);
    options.heartbeat_timeout = Duration::from_secs(2);
    let addr = origin.addr;
    let tunnel = TunnelThread::spawn(options, move || LocalPort::new(addr.to_string())).unwrap();
    let mut registrations = tunnel.registrations();

    relay.set(Mode::Freeze);
    // The tunnel notices, drops the frozen connection, and gets its name back once the
    // gateway has let go of the old one.
    within("silent reconnect", registrations.wait_for(|n| *n >= 2))
        .await
        .unwrap();
    let (status, _, body) = Visitor::new(gateway.addr()).get("quiet", "/cookies").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("cookies")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_refused_with_400() {
    let gateway = TestGateway::start();
    let mut socket = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nhost: demo.localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    within("400", socket.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("more than one Host header"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_accepts_but_never_answers_is_reported_not_waited_on_forever() {
    // A listener nobody serves: the connection opens, the registration never returns.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", mute.local_addr().unwrap());
    let local = tokio::task::LocalSet::new();
    let result = local
        .run_until(async {
            let connect = Tunnel::connect(client_options(&address), LocalPort::new("localhost:1"));
            tokio::time::timeout(std::time::Duration::from_secs(30), connect).await
        })
        .await;
    match result {
        Ok(Err(err @ ConnectError::Unreachable { .. })) => {
            assert!(err.to_string().contains("no answer"), "{err}")
        }
        Ok(Err(other)) => panic!("unexpected error: {other}"),
        Ok(Ok(_)) => panic!("registered with nobody"),
        Err(_) => panic!("connect hung past its own timeout"),
    }
    drop(mute);
}
