//! 50 MiB each way, byte-exact, with bounded memory. Alone in its binary so that no other
//! test shares the process whose peak RSS it reads.

mod common;

use common::*;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

const LEN: u64 = 50 * 1024 * 1024;

/// Growth of peak RSS allowed over a 50 MiB transfer. Buffering the whole body would
/// cost at least 50 MiB; the pipeline holds a few windows of 256 KiB.
const ALLOWED_GROWTH_KIB: u64 = 24 * 1024;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_down_and_up_byte_exact_in_bounded_memory() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("bulk", origin.addr);
    let visitor = Visitor::new(gateway.addr());
    // Warm up every buffer and pool once, so that growth below is the transfer's own.
    let (status, _, _) = visitor.get("bulk", "/download?n=1048576").await;
    assert_eq!(status, StatusCode::OK);
    let before = peak_rss_kib();

    for path in [
        format!("/download?n={LEN}"),
        format!("/download?n={LEN}&cl=1"),
    ] {
        let request = visitor
            .request("GET", "bulk", &path)
            .body(full(""))
            .unwrap();
        let response = within("download head", visitor.send(request)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let (mut len, mut fnv) = (0u64, Fnv::default());
        while let Some(frame) = within("download body", body.frame()).await {
            let data = frame.unwrap().into_data().unwrap();
            len += data.len() as u64;
            fnv.update(&data);
        }
        assert_eq!(len, LEN, "{path}");
        assert_eq!(fnv.0, pattern_hash(LEN), "{path}");
    }

    let chunks = futures::stream::iter((0..LEN).step_by(100_000)).map(|offset| {
        let n = (LEN - offset).min(100_000) as usize;
        Ok::<_, std::io::Error>(Frame::data(pattern(offset, n)))
    });
    let request = visitor
        .request("POST", "bulk", "/sink")
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap();
    let response = within("upload", visitor.send(request)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{LEN} {:016x}", pattern_hash(LEN)));

    let growth = peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS growth: {growth} KiB");
    assert!(
        growth < ALLOWED_GROWTH_KIB,
        "peak RSS grew by {growth} KiB moving 3 x 50 MiB"
    );
}
