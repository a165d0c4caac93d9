//! End-to-end HTTP through a real gateway, tunnel and origin: methods, paths, headers,
//! bodies, SSE and status codes behave as on a direct connection.

mod common;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_get_reaches_the_origin_and_back() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let tunnel = gateway.tunnel("demo", origin.addr);
    assert_eq!(
        tunnel.url(),
        format!("http://demo.localhost:{}", gateway.addr().port())
    );

    let visitor = Visitor::new(gateway.addr());
    let (status, headers, body) = visitor.get("demo", "/cookies").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "cookies");
    assert_eq!(headers["x-origin"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_and_the_raw_target_arrive_byte_exact() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());

    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"] {
        let (status, _, body) = visitor.call(method, "demo", "/echo?m=1", "x").await;
        assert_eq!(status, StatusCode::OK, "{method}: {body:?}");
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.starts_with(&format!("{method} /echo?m=1\n")),
            "{method}: {body}"
        );
    }
    // Escapes, dot segments and odd query bytes are not normalised.
    let target = "/a%2Fb/echo?q=%20a+b&x=%2F&empty=&=v&u=%E2%9C%93";
    let (_, _, body) = visitor.get("demo", target).await;
    let first_line = String::from_utf8(body.to_vec())
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(first_line, format!("GET {target}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_headers_stay_hop_by_hop_go_forwarded_are_added() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());

    let request = visitor
        .request("GET", "demo", "/echo")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .header("cookie", "session=abc")
        .body(full(Bytes::new()))
        .unwrap();
    let response = visitor.send(request).await;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let multi: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("x-multi:"))
        .collect();
    assert_eq!(multi, ["x-multi: one", "x-multi: two"], "{text}");
    assert!(lines.contains(&"cookie: session=abc"), "{text}");
    // The visitor's own claim is dropped (tests/public_port.rs has the trusting case).
    assert!(lines.contains(&"x-forwarded-for: 127.0.0.1"), "{text}");
    assert!(lines.contains(&"x-forwarded-proto: http"), "{text}");
    let host = format!("demo.localhost:{}", gateway.addr().port());
    assert!(lines.contains(&format!("host: {host}").as_str()), "{text}");
    assert!(
        lines.contains(&format!("x-forwarded-host: {host}").as_str()),
        "{text}"
    );
    for gone in ["x-secret:", "keep-alive:"] {
        assert!(
            !lines.iter().any(|l| l.starts_with(gone)),
            "{gone} leaked: {text}"
        );
    }

    let (_, headers, _) = visitor.get("demo", "/cookies").await;
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_streams_byte_exact() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());

    // No Content-Length: the visitor sends chunked, of a size not known up front.
    let len: u64 = 5 * 1024 * 1024 + 17;
    let chunks = futures::stream::iter((0..len).step_by(40_000)).map(move |offset| {
        let n = (len - offset).min(40_000) as usize;
        Ok::<_, std::io::Error>(Frame::data(pattern(offset, n)))
    });
    let request = visitor
        .request("POST", "demo", "/sink")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    let response = within("chunked upload", visitor.send(request)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{len} {:016x}", pattern_hash(len)));

    // A small upload with a length rides inline; its bytes arrive the same.
    let (_, _, body) = visitor
        .call("POST", "demo", "/sink", pattern(0, 1000))
        .await;
    assert_eq!(body, format!("1000 {:016x}", pattern_hash(1000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());

    let request = visitor
        .request("GET", "demo", "/sse?n=3")
        .body(full(Bytes::new()))
        .unwrap();
    // One event is released up front so the head and event 0 can flow.
    origin.gate.add_permits(1);
    let response = within("SSE head", visitor.send(request)).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    for i in 0..3 {
        // Event i must arrive before event i+1 is even produced: nothing is buffered.
        let frame = within("SSE event", body.frame()).await.unwrap().unwrap();
        let data = frame.into_data().unwrap();
        assert_eq!(data, format!("id: {i}\ndata: event {i}\n\n"));
        origin.gate.add_permits(1);
    }
    assert!(within("SSE end", body.frame()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_304_and_origin_statuses_pass_through() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());

    let (status, headers, body) = visitor.call("HEAD", "demo", "/head", Bytes::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "1234");
    assert_eq!(headers["etag"], "\"v1\"");
    assert!(body.is_empty());

    for code in [204u16, 304] {
        let (status, headers, body) = visitor.get("demo", &format!("/status/{code}")).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(headers["x-status"], code.to_string().as_str());
        assert!(body.is_empty());
    }
    for code in [201u16, 400, 401, 403, 404, 418, 500, 503] {
        let (status, _, body) = visitor.get("demo", &format!("/status/{code}")).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(body, format!("status {code}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_with_a_content_length_complete_every_time() {
    // The origin answers as soon as it has read Content-Length bytes, which can be before
    // the gateway's `end` arrives: that race once turned some of these into 502s.
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("demo", origin.addr);
    let visitor = Visitor::new(gateway.addr());
    let len: u64 = 4 * 1024 * 1024;
    for round in 0..12 {
        let chunks = futures::stream::iter((0..len).step_by(256 * 1024)).map(move |offset| {
            let n = (len - offset).min(256 * 1024) as usize;
            Ok::<_, std::io::Error>(Frame::data(pattern(offset, n)))
        });
        let request = visitor
            .request("POST", "demo", "/sink")
            .header("content-length", len)
            .body(BodyExt::boxed(StreamBody::new(chunks)))
            .unwrap();
        let response = within("upload", visitor.send(request)).await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            format!("{len} {:016x}", pattern_hash(len)),
            "round {round}"
        );
    }
}
