//! Limits on the public port and the RPC port, forwarding headers, and the requests a
//! proxy must refuse: each limit at its edge, each refusal with its status.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use capstan_gateway::GatewayOptions;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with `options` and a tunnel "demo" to a test origin.
async fn demo(options: GatewayOptions) -> (TestGateway, TestOrigin, capstan_client::TunnelThread) {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::with_options(options);
    let tunnel = gateway.tunnel("demo", origin.addr);
    (gateway, origin, tunnel)
}

/// Writes `request` on a new connection and reads until the gateway closes it.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = within("the answer", socket.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// True when the gateway closes `socket` within `bound`, having sent nothing or an answer.
async fn closed_within(socket: &mut TcpStream, bound: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(bound, socket.read_to_end(&mut rest))
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_and_an_idle_keep_alive_connection_are_closed_at_the_header_timeout() {
    let mut options = fast_gateway_options();
    options.header_timeout = Duration::from_millis(300);
    let (gateway, _origin, _tunnel) = demo(options).await;
    let host = format!("demo.localhost:{}", gateway.addr().port());
    // Far below the 10 s default, far above 300 ms: only the option can close it in time.
    let bound = Duration::from_secs(5);

    // Slowloris: a head that never ends.
    let mut slow = TcpStream::connect(gateway.addr()).await.unwrap();
    slow.write_all(format!("GET /cookies HTTP/1.1\r\nhost: {host}\r\nx-a: ").as_bytes())
        .await
        .unwrap();
    assert!(closed_within(&mut slow, bound).await, "a slow head is cut");

    // A whole head in time is served; then the idle keep-alive connection is closed.
    let mut idle = TcpStream::connect(gateway.addr()).await.unwrap();
    idle.write_all(format!("GET /cookies HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    assert!(
        closed_within(&mut idle, bound).await,
        "an idle connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_limit_gets_431() {
    const LIMIT: usize = 16 * 1024;
    let mut options = fast_gateway_options();
    options.max_header_bytes = LIMIT;
    let (gateway, _origin, _tunnel) = demo(options).await;
    let head = |total: usize| {
        let start = format!(
            "GET /cookies HTTP/1.1\r\nhost: demo.localhost:{}\r\nconnection: close\r\nx-pad: ",
            gateway.addr().port()
        );
        let pad = "p".repeat(total - start.len() - 4);
        format!("{start}{pad}\r\n\r\n")
    };
    let at = raw(gateway.addr(), head(LIMIT).as_bytes()).await;
    assert!(
        at.starts_with("HTTP/1.1 200"),
        "a head of exactly the limit: {at}"
    );
    let over = raw(gateway.addr(), head(LIMIT + 1).as_bytes()).await;
    assert!(over.starts_with("HTTP/1.1 431"), "one byte over: {over}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_limited_on_both_ports() {
    let mut options = fast_gateway_options();
    options.max_connections_per_ip = 3; // The tunnel's own connection is one of them.
    let (gateway, _origin, _tunnel) = demo(options).await;
    let visitor = Visitor::new(gateway.addr());
    let _a = TcpStream::connect(gateway.addr()).await.unwrap();
    let mut b = TcpStream::connect(gateway.addr()).await.unwrap();
    let refused = raw(gateway.addr(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");

    // A freed slot is usable again once the gateway has seen the close.
    b.shutdown().await.unwrap();
    drop(b);
    within("a slot frees up", async {
        loop {
            let answer = raw(
                gateway.addr(),
                format!(
                    "GET /cookies HTTP/1.1\r\nhost: demo.localhost:{}\r\nconnection: close\r\n\r\n",
                    gateway.addr().port()
                )
                .as_bytes(),
            )
            .await;
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        }
    })
    .await;
    drop(visitor);

    // The RPC port counts on its own: three connections stay open, a fourth is closed.
    let rpc = gateway.thread.rpc_addr().unwrap();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(TcpStream::connect(rpc).await.unwrap());
    }
    let mut fourth = TcpStream::connect(rpc).await.unwrap();
    assert!(closed_within(&mut fourth, Duration::from_secs(5)).await);
    assert!(
        !closed_within(&mut open[0], Duration::from_millis(200)).await,
        "the ones within the limit stay open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_whether_it_says_its_length_or_not() {
    let mut options = fast_gateway_options();
    options.max_request_body = Some(1000);
    let (gateway, _origin, _tunnel) = demo(options).await;
    let visitor = Visitor::new(gateway.addr());
    let sink = |n| format!("{n} {:016x}", Fnv::of(&pattern(0, n)));

    let (status, _, body) = visitor
        .call("POST", "demo", "/sink", pattern(0, 1000))
        .await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from(sink(1000))));
    let (status, _, _) = visitor
        .call("POST", "demo", "/sink", pattern(0, 1001))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked: the length shows only as the body arrives.
    let chunked = |n: usize| {
        format!(
            "POST /sink HTTP/1.1\r\nhost: demo.localhost:{}\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n{n:x}\r\n{}\r\n0\r\n\r\n",
            gateway.addr().port(),
            "a".repeat(n)
        )
    };
    let at = raw(gateway.addr(), chunked(1000).as_bytes()).await;
    assert!(at.starts_with("HTTP/1.1 200"), "{at}");
    let over = raw(gateway.addr(), chunked(1001).as_bytes()).await;
    assert!(over.starts_with("HTTP/1.1 413"), "{over}");
}

/// The forwarding headers the origin saw for a request that claims its own.
async fn forwarded_as_seen(trust: bool) -> Vec<String> {
    let mut options = fast_gateway_options();
    options.trust_forwarded = trust;
    let (gateway, _origin, _tunnel) = demo(options).await;
    let visitor = Visitor::new(gateway.addr());
    let request = visitor
        .request("GET", "demo", "/echo")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.9")
        .body(full(Bytes::new()))
        .unwrap();
    let response = visitor.send(request).await;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    let text = String::from_utf8(body.to_bytes().to_vec()).unwrap();
    text.lines()
        .filter(|l| l.starts_with("x-forwarded-") || l.starts_with("forwarded"))
        .map(|l| l.replace(&gateway.addr().port().to_string(), "PORT"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_cannot_claim_an_address_unless_the_gateway_trusts_a_proxy_in_front() {
    let mut seen = forwarded_as_seen(false).await;
    seen.sort();
    assert_eq!(
        seen,
        [
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-host: demo.localhost:PORT",
            "x-forwarded-proto: http"
        ]
    );
    let seen = forwarded_as_seen(true).await;
    assert!(
        seen.contains(&"x-forwarded-for: 203.0.113.9, 127.0.0.1".into()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"forwarded: for=203.0.113.9".into()),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_and_foreign_hosts_are_refused() {
    let (gateway, origin, _tunnel) = demo(fast_gateway_options()).await;
    let port = gateway.addr().port();

    // Content-Length and Transfer-Encoding together: hyper frames the body by
    // Transfer-Encoding, drops the Content-Length (RFC 9112 section 6.3) and closes the
    // connection after its answer, so the request hidden behind it is never read.
    let both = format!(
        "POST /sink HTTP/1.1\r\nhost: demo.localhost:{port}\r\ncontent-length: 4\r\n\
         transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /cookies HTTP/1.1\r\nhost: demo.localhost:{port}\r\n\r\n"
    );
    let answer = raw(gateway.addr(), both.as_bytes()).await;
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "nothing smuggled: {answer}"
    );
    assert!(!answer.contains("cookies"), "{answer}");

    // An absolute-form target names the host, whatever Host says.
    let foreign = format!(
        "GET http://evil.example/cookies HTTP/1.1\r\nhost: demo.localhost:{port}\r\nconnection: close\r\n\r\n"
    );
    let answer = raw(gateway.addr(), foreign.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("evil.example"), "{answer}");
    let ours = format!(
        "GET http://demo.localhost:{port}/cookies HTTP/1.1\r\nhost: other\r\nconnection: close\r\n\r\n"
    );
    let answer = raw(gateway.addr(), ours.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // CONNECT: this is no forward proxy.
    let connect =
        format!("CONNECT demo.localhost:{port} HTTP/1.1\r\nhost: demo.localhost:{port}\r\nconnection: close\r\n\r\n");
    let answer = raw(gateway.addr(), connect.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");
    drop(origin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_cannot_strip_the_forwarding_headers_or_keep_a_foreign_host() {
    let (gateway, _origin, _tunnel) = demo(fast_gateway_options()).await;
    let port = gateway.addr().port();
    let seen = |answer: String| -> Vec<String> {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        let mut lines: Vec<String> = body
            .lines()
            .filter(|l| l.starts_with("x-forwarded-") || l.starts_with("host:"))
            .map(|l| l.replace(&port.to_string(), "PORT"))
            .collect();
        lines.sort();
        lines
    };
    let expected = [
        "host: demo.localhost:PORT",
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-host: demo.localhost:PORT",
        "x-forwarded-proto: http",
    ];
    // Naming them in Connection would make them hop-by-hop, and stripped.
    let stripping = format!(
        "GET /echo HTTP/1.1\r\nhost: demo.localhost:{port}\r\n\
         connection: close, x-forwarded-for, x-forwarded-host, x-forwarded-proto, host\r\n\r\n"
    );
    assert_eq!(
        seen(raw(gateway.addr(), stripping.as_bytes()).await),
        expected
    );
    // An absolute-form target's host is the one the origin sees.
    let absolute = format!(
        "GET http://demo.localhost:{port}/echo HTTP/1.1\r\nhost: other.example\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(
        seen(raw(gateway.addr(), absolute.as_bytes()).await),
        expected
    );
}
