//! HTTP measurements: readiness, new connection per request, bodies, SSE delay.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use capstan_bench::pattern::{self, PatternBody};
use capstan_bench::stats::{Json, Samples};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::Target;

const MIB: f64 = 1024.0 * 1024.0;

/// An HTTP/1.1 connection to the target, driven on its own task.
async fn connect<B>(target: &Target) -> anyhow::Result<SendRequest<B>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    sender.ready().await?;
    Ok(sender)
}

fn request<B>(target: &Target, method: Method, path: &str, body: B) -> anyhow::Result<Request<B>> {
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, target.host())
        .body(body)?)
}

pub(crate) async fn wait(target: &Target, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let attempt = async {
            let mut sender = connect::<Empty<Bytes>>(target).await?;
            let response = sender
                .send_request(request(target, Method::GET, path, Empty::new())?)
                .await?;
            let status = response.status();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        };
        match attempt.await {
            Ok(StatusCode::OK) => {
                let mut json = Json::new();
                json.num("waited_s", start.elapsed().as_secs_f64());
                return Ok(json.finish());
            }
            Ok(status) => last = format!("status {status}"),
            Err(err) => last = format!("{err:#}"),
        }
        // A poll interval, not a guess at readiness: the loop ends on the first 200.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{}{path} not ready after {timeout:?}: {last}", target.addr)
}

/// One GET /1k on a fresh connection, read by Content-Length (or to EOF without one).
async fn one_request(addr: &str, head: &[u8]) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(head).await?;
    let mut buf = Vec::with_capacity(2048);
    let header_end = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("closed before the response head");
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..header_end])?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(length) => {
            while buf.len() < header_end + length {
                if stream.read_buf(&mut buf).await? == 0 {
                    bail!("closed mid-body");
                }
            }
        }
        None => while stream.read_buf(&mut buf).await? != 0 {},
    }
    Ok(())
}

pub(crate) async fn conn(
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<String> {
    let head = format!(
        "GET /1k HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.host()
    );
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, head) = (target.addr.clone(), head.clone());
            tokio::spawn(async move {
                let (mut samples, mut errors, mut last_error) =
                    (Samples::default(), 0u64, String::new());
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match one_request(&addr, head.as_bytes()).await {
                        Ok(()) => samples.push(t0.elapsed()),
                        Err(err) => {
                            errors += 1;
                            last_error = format!("{err:#}");
                        }
                    }
                }
                (samples, errors, last_error)
            })
        })
        .collect();
    let (mut all, mut errors, mut last_error) = (Samples::default(), 0, String::new());
    for worker in workers {
        let (samples, e, last) = worker.await?;
        all.extend(samples);
        errors += e;
        if !last.is_empty() {
            last_error = last;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut json = Json::new();
    json.num("requests", all.len() as f64)
        .num("errors", errors as f64)
        .num("duration_s", elapsed)
        .num("rps", all.len() as f64 / elapsed);
    all.write_to(&mut json, "");
    if !last_error.is_empty() {
        json.str("last_error", &last_error);
    }
    Ok(json.finish())
}

/// Transfers so far: their time, and the ones that failed.
#[derive(Default)]
struct Tally {
    busy: Duration,
    done: u32,
    errors: u32,
    last_error: String,
}

impl Tally {
    /// Counts one transfer; true when it failed and the connection should be replaced.
    fn failed(&mut self, result: anyhow::Result<Duration>) -> bool {
        match result {
            Ok(took) => {
                self.busy += took;
                self.done += 1;
                false
            }
            Err(err) => {
                self.errors += 1;
                self.last_error = format!("{err:#}");
                true
            }
        }
    }
}

/// One GET of `size` pattern bytes: the time to the last byte, then the sha256 checked.
async fn get_once(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    size: u64,
    expected: &str,
) -> anyhow::Result<Duration> {
    let path = format!("/bytes?n={size}");
    // hyper takes a request only once the connection is done with the last response.
    sender.ready().await?;
    let t0 = Instant::now();
    let response = sender
        .send_request(request(target, Method::GET, &path, Empty::new())?)
        .await?;
    if response.status() != StatusCode::OK {
        bail!("GET {path}: {}", response.status());
    }
    // Keep the frames and hash after the clock stops, so that hashing in this process
    // does not cap the rate being measured.
    let mut frames = Vec::new();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            frames.push(data);
        }
    }
    let took = t0.elapsed();
    let mut hasher = Sha256::new();
    frames.iter().for_each(|f| hasher.update(f));
    let got = pattern::hex(&hasher.finalize());
    if got != expected {
        bail!("GET {path}: sha256 {got}, expected {expected}");
    }
    Ok(took)
}

/// One POST of `size` pattern bytes to /sink, whose answer must be their sha256.
async fn post_once(
    sender: &mut SendRequest<PatternBody>,
    target: &Target,
    size: u64,
    expected: &str,
) -> anyhow::Result<Duration> {
    sender.ready().await?;
    let t0 = Instant::now();
    let req = request(target, Method::POST, "/sink", PatternBody::new(size))?;
    let response = sender.send_request(req).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    let took = t0.elapsed();
    if status != StatusCode::OK || answer != expected.as_bytes() {
        let answer = String::from_utf8_lossy(&answer);
        bail!("POST /sink: {status} {}", answer.trim());
    }
    Ok(took)
}

/// `repeat` transfers in a row on one connection, or a new one after a failure. A failed
/// transfer is counted and reported, not fatal, so that a path that drops some bodies
/// still shows its rate; only a run where all fail is an error.
pub(crate) async fn body(
    target: &Target,
    method: &str,
    size: u64,
    repeat: u32,
) -> anyhow::Result<String> {
    // The expected hash is computed before any timing starts.
    let expected = pattern::sha256_hex(size);
    let mut tally = Tally::default();
    match method {
        "get" => {
            let mut sender = connect(target).await?;
            for _ in 0..repeat {
                if tally.failed(get_once(&mut sender, target, size, &expected).await) {
                    sender = connect(target).await?;
                }
            }
        }
        "post" => {
            let mut sender = connect(target).await?;
            for _ in 0..repeat {
                if tally.failed(post_once(&mut sender, target, size, &expected).await) {
                    sender = connect(target).await?;
                }
            }
        }
        other => bail!("unknown method {other}: use get or post"),
    }
    if tally.done == 0 {
        bail!("every transfer failed: {}", tally.last_error);
    }
    let bytes = size as f64 * f64::from(tally.done);
    let mut json = Json::new();
    json.num("bytes", bytes)
        .num("seconds", tally.busy.as_secs_f64())
        .num("mib_s", bytes / MIB / tally.busy.as_secs_f64())
        .num("errors", f64::from(tally.errors))
        .str("sha256", &expected);
    if tally.errors > 0 {
        json.str("last_error", &tally.last_error);
    }
    Ok(json.finish())
}

pub(crate) async fn sse(target: &Target, events: u64, warmup: u64) -> anyhow::Result<String> {
    let mut sender = connect::<Empty<Bytes>>(target).await?;
    let path = format!("/sse?n={}", events + warmup);
    let response = sender
        .send_request(request(target, Method::GET, &path, Empty::new())?)
        .await?;
    if response.status() != StatusCode::OK {
        bail!("GET {path}: {}", response.status());
    }
    let mut body = response.into_body();
    let (mut pending, mut seen, mut delays) = (String::new(), 0u64, Samples::default());
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        pending.push_str(std::str::from_utf8(&data)?);
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let sent: u128 = event.trim().trim_start_matches("data: ").parse()?;
            seen += 1;
            if seen > warmup {
                delays.push(Duration::from_nanos(now.saturating_sub(sent) as u64));
            }
        }
    }
    if delays.len() as u64 != events {
        bail!("got {} of {events} events", delays.len());
    }
    let mut json = Json::new();
    json.num("events", events as f64);
    delays.write_to(&mut json, "");
    Ok(json.finish())
}
