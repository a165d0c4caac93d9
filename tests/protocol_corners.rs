//! Protocol corners an independent peer found, each decided in docs/protocol.md: bad
//! statuses, a head with a body, a body longer than its Content-Length, the call's end after
//! a whole body, and exception text shown to visitors.

mod common;

use std::rc::Rc;

use bytes::Bytes;
use capstan::capstan_capnp::fetcher;
use common::raw::RawTunnel;
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// A raw tunnel whose answer the path picks (see `fetch`). It reports how each `fetch`
/// ended for it: "finished", or "cancelled" when the gateway dropped the call.
struct Corners(mpsc::Sender<String>);

/// Reports "cancelled" unless disarmed: a future dropped mid-way never reaches the end.
struct Cancelled(Option<mpsc::Sender<String>>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if let Some(reports) = self.0.take() {
            let _ = reports.try_send("cancelled".into());
        }
    }
}

impl fetcher::Server for Corners {
    async fn fetch(
        self: Rc<Self>,
        params: fetcher::FetchParams,
        mut results: fetcher::FetchResults,
    ) -> Result<(), capnp::Error> {
        let mut guard = Cancelled(Some(self.0.clone()));
        let params = params.get()?;
        let path = String::from_utf8(params.get_request()?.get_path()?.to_vec()).unwrap();
        let number = |key: &str| -> u64 {
            let value = path.split(&format!("{key}=")).nth(1).unwrap();
            value.split('&').next().unwrap().parse().unwrap()
        };
        if path.starts_with("/status") {
            let mut response = results.get().init_response();
            response.set_status(number("s") as u16);
            return Ok(());
        }
        if path.starts_with("/traceback") {
            guard.0 = None;
            let text = "Traceback (most recent call last):\n  File \"t.py\", line 9, in fetch\n    secret = 42\nValueError: the origin is down";
            return Err(capnp::Error::failed(text.into()));
        }
        // /stream?cl=N&n=M: a head with Content-Length N, then M bytes, end, return;
        // `head=B` puts B bytes of body into the head itself.
        let mut start = params.get_responder()?.start_request();
        {
            let mut head = start.get().init_response();
            head.set_status(200);
            let mut headers = head.reborrow().init_headers(1);
            headers.reborrow().get(0).set_name("content-length");
            headers
                .get(0)
                .set_value(number("cl").to_string().as_bytes());
            if path.contains("head=") {
                head.set_body(&pattern(0, number("head") as usize));
            }
        }
        let body = start.send().promise.await?.get()?.get_body()?;
        let n = number("n");
        for offset in (0..n).step_by(capstan::MAX_CHUNK) {
            let len = (n - offset).min(capstan::MAX_CHUNK as u64) as usize;
            let mut write = body.write_request();
            write.get().set_data(&pattern(offset, len));
            write.send().await?;
        }
        body.end_request().send().promise.await?;
        // Work after `end` (a log line, a metric): the call must not be cancelled under
        // it just because the visitor has everything.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        guard.0 = None;
        let _ = self.0.send("finished".into()).await;
        Ok(())
    }
}

async fn corners() -> (TestGateway, RawTunnel, Visitor, mpsc::Receiver<String>) {
    let gateway = TestGateway::start();
    let (tx, reports) = mpsc::channel(16);
    let tunnel = RawTunnel::start(&gateway, "raw", move || Corners(tx)).await;
    let visitor = Visitor::new(gateway.addr());
    (gateway, tunnel, visitor, reports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_outside_100_to_599_or_informational_is_a_502() {
    let (_gateway, _tunnel, visitor, _reports) = corners().await;
    for (status, expected) in [
        (99, 502),
        (100, 502),
        (101, 502),
        (200, 200),
        (599, 599),
        (600, 502),
        (999, 502),
    ] {
        let (got, _, body) = visitor.get("raw", &format!("/status?s={status}")).await;
        assert_eq!(got.as_u16(), expected, "status {status}: {body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_head_with_a_body_is_a_502_not_a_silent_drop() {
    let (_gateway, _tunnel, visitor, _reports) = corners().await;
    let (status, _, body) = visitor.get("raw", "/stream?cl=0&n=0&head=5").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("Responder.start carried a body of 5 bytes"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_its_content_length_is_cut_never_truncated() {
    let (_gateway, _tunnel, visitor, _reports) = corners().await;
    // The excess arrives in the same write as the last bytes: the visitor must not get
    // 1000 bytes that look complete.
    let request = visitor
        .request("GET", "raw", "/stream?cl=1000&n=1001")
        .body(full(Bytes::new()))
        .unwrap();
    let response = within("head", visitor.send(request)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = within("cut body", response.into_body().collect()).await;
    assert!(body.is_err(), "a longer body must be cut: {body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_content_length_body_lets_the_tunnels_call_finish() {
    let (_gateway, _tunnel, visitor, mut reports) = corners().await;
    for n in [100_000u64, 1] {
        let (status, _, body) = visitor.get("raw", &format!("/stream?cl={n}&n={n}")).await;
        assert_eq!((status, body.len() as u64), (StatusCode::OK, n));
        assert_eq!(within("report", reports.recv()).await.unwrap(), "finished");
    }
    // A visitor that leaves early still cancels the call.
    let request = visitor
        .request("GET", "raw", "/stream?cl=50000000&n=50000000")
        .body(full(Bytes::new()))
        .unwrap();
    let response = within("head", visitor.send(request)).await;
    drop(response);
    assert_eq!(within("report", reports.recv()).await.unwrap(), "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitors_see_one_clean_line_of_a_tunnels_exception() {
    let (_gateway, _tunnel, visitor, _reports) = corners().await;
    let (status, _, body) = visitor.get("raw", "/traceback").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        "capstan: the tunnel failed: ValueError: the origin is down\n"
    );
}
