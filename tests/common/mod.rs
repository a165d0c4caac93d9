//! Test fixtures: a real gateway, tunnel, origin and relay on 127.0.0.1:0, shut down on drop.
#![allow(dead_code, unreachable_pub)]

pub mod origin;
pub mod peer;
pub mod python;
pub mod raw;
pub mod relay;
pub mod ws;
pub mod ws_origin;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use capstan_client::{ClientOptions, LocalPort, TunnelThread};
use capstan_gateway::{GatewayOptions, GatewayThread};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[allow(unused_imports)]
pub use origin::TestOrigin;
#[allow(unused_imports)]
pub use relay::Relay;
#[allow(unused_imports)]
pub use ws_origin::WsOrigin;

/// A body a visitor sends.
pub type VisitorBody = BoxBody<Bytes, std::io::Error>;

/// Gateway options with a fast heartbeat, so dead tunnels are found within a test. The
/// 2 s timeout leaves room for a loaded 2-core machine to answer late but alive.
pub fn fast_gateway_options() -> GatewayOptions {
    let mut options = GatewayOptions::default();
    options.heartbeat_interval = Duration::from_millis(250);
    options.heartbeat_timeout = Duration::from_secs(2);
    options.drain_timeout = Duration::from_secs(1);
    options
}

/// A gateway on 127.0.0.1:0, with a raw RPC port too.
pub struct TestGateway {
    pub thread: GatewayThread,
}

impl TestGateway {
    pub fn start() -> Self {
        Self::with_options(fast_gateway_options())
    }

    pub fn with_options(options: GatewayOptions) -> Self {
        let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rpc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let thread = GatewayThread::spawn(options, public, Some(rpc)).unwrap();
        Self { thread }
    }

    pub fn addr(&self) -> SocketAddr {
        self.thread.addr()
    }

    /// The address tunnels dial over WebSocket.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The address tunnels dial over raw TCP RPC.
    pub fn rpc_url(&self) -> String {
        format!("tcp://{}", self.thread.rpc_addr().unwrap())
    }

    /// Opens a tunnel named `name` to `origin` through this gateway.
    pub fn tunnel(&self, name: &str, origin: SocketAddr) -> TunnelThread {
        tunnel_via(&self.url(), name, origin)
    }
}

/// A tunnel to `origin`, registered as `name` at `gateway`.
pub fn tunnel_via(gateway: &str, name: &str, origin: SocketAddr) -> TunnelThread {
    TunnelThread::spawn(client_options(gateway).name(name), move || {
        LocalPort::new(origin.to_string())
    })
    .unwrap()
}

/// Client options that reconnect and drain quickly, as a test needs.
pub fn client_options(gateway: &str) -> ClientOptions {
    let mut options = ClientOptions::new(gateway);
    options.drain_timeout = Duration::from_secs(1);
    options.max_backoff = Duration::from_millis(500);
    options
}

/// A visitor: plain HTTP/1.1 to the gateway with an explicit `Host`.
#[derive(Clone)]
pub struct Visitor {
    client: Client<HttpConnector, VisitorBody>,
    gateway: SocketAddr,
}

impl Visitor {
    pub fn new(gateway: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            gateway,
        }
    }

    /// A request builder for `path` at tunnel `name` ("" for the bare address).
    pub fn request(&self, method: &str, name: &str, path: &str) -> http::request::Builder {
        let host = if name.is_empty() {
            format!("{}", self.gateway)
        } else {
            format!("{name}.localhost:{}", self.gateway.port())
        };
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.gateway))
            .header(http::header::HOST, host)
    }

    pub async fn send(&self, request: Request<VisitorBody>) -> Response<hyper::body::Incoming> {
        self.client.request(request).await.unwrap()
    }

    /// Sends a request with a whole body and reads the whole answer.
    pub async fn call(
        &self,
        method: &str,
        name: &str,
        path: &str,
        body: impl Into<Bytes>,
    ) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let request = self.request(method, name, path).body(full(body)).unwrap();
        let response = self.send(request).await;
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    pub async fn get(&self, name: &str, path: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
        self.call("GET", name, path, Bytes::new()).await
    }
}

pub fn full(body: impl Into<Bytes>) -> VisitorBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The deterministic test pattern: byte `i` of any payload.
pub fn pattern(offset: u64, len: usize) -> Bytes {
    (offset..offset + len as u64)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// FNV-1a, 64-bit: a dependency-free way to compare large bodies.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for byte in data {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    pub fn of(data: &[u8]) -> u64 {
        let mut fnv = Self::default();
        fnv.update(data);
        fnv.0
    }
}

/// The hash of `pattern(0, len)`, computed in chunks.
pub fn pattern_hash(len: u64) -> u64 {
    let mut fnv = Fnv::default();
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(1 << 20) as usize;
        fnv.update(&pattern(offset, n));
        offset += n as u64;
    }
    fnv.0
}

/// Fails a test that hangs instead of letting it run forever.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Says, straight to stderr, that a peer's toolchain is missing: libtest hides the
/// `eprintln!` of tests that pass, and a skipped test passes.
pub fn announce_missing(what: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!! {what} is unavailable, SKIPPING: {why}\n"
    );
}

/// What a test does without its peer: skip (`None`), except under `CI=true`, where every
/// interop test must run and a missing toolchain fails.
pub fn skip_unless_ci<T>(what: &str, why: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} must run in CI, but it is unavailable: {why}");
    }
    None
}

/// A property test's configuration: `ci_cases` cases unless `PROPTEST_CASES` says
/// otherwise (docs/fuzzing.md has the long run), and no persisted failures: a failure
/// becomes a named test with its input written out.
pub fn fuzz_config(ci_cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(ci_cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
