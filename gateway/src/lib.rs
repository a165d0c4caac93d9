//! The capstan gateway: a public HTTP server that routes each visitor to a tunnel by `Host`.
//!
//! # Layout
//! - `listen`: accepts visitors, tunnel WebSockets and raw RPC; stops gracefully.
//! - `limit`: open connections per IP address on both ports.
//! - `route`: `Host` header to a tunnel, the connect endpoint, or 404.
//! - `fetch`: one HTTP request as one `Fetcher.fetch` call.
//! - `body`: the `Responder` and `BodySource` capabilities.
//! - `response`: the body of a streamed response, on its way to the visitor.
//! - `websocket`: one visitor WebSocket: `connectWebSocket`, the upgrade, two pumps.
//! - `session`: one tunnel connection: `Gateway.register`, heartbeat, cleanup.
//! - `registry`: live tunnels by name and names held for reconnecting tunnels.
//! - `error`: every failure mapped to one HTTP answer.
//!
//! Everything runs on one thread: capnp-rpc is `!Send`, and keeping hyper on the same
//! `LocalSet` as the RPC connections removes the channel hop between them (see
//! docs/architecture.md). Run [`Gateway::serve`] inside a `tokio::task::LocalSet`, or use
//! [`GatewayThread`] to get a gateway on a thread of its own.

mod body;
mod error;
mod fetch;
mod limit;
mod listen;
mod registry;
mod response;
mod route;
mod session;
mod thread;
mod websocket;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::ProxyError;
pub use thread::GatewayThread;

/// How a gateway behaves. Build it with `GatewayOptions::default()` and set fields.
///
/// Its `Debug` shows how many tokens there are, never the tokens.
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayOptions {
    /// Tunnels are served at `{name}.{domain}`.
    pub domain: String,
    /// The public base URL, e.g. `https://tunnels.example.com`, when the gateway sits
    /// behind a proxy. By default `http://{domain}:{listen port}`.
    pub public_url: Option<String>,
    /// Tokens that may register tunnels. Empty means anyone may.
    pub tokens: Vec<String>,
    /// Most `fetch` calls in flight per tunnel; more get 503.
    pub max_inflight_per_tunnel: usize,
    /// How long a name stays reserved for its token after its tunnel disconnects.
    pub grace: Duration,
    /// How often each tunnel is pinged.
    pub heartbeat_interval: Duration,
    /// A tunnel that does not answer a ping within this time is dropped.
    pub heartbeat_timeout: Duration,
    /// A connection that registers no name within this time is closed.
    pub register_timeout: Duration,
    /// Route requests that match no tunnel name to the only tunnel, if there is exactly
    /// one. Used by the embedded gateway of `capstan 3000`.
    pub bare_to_single_tunnel: bool,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// The largest WebSocket message a visitor may send; a bigger one closes that socket
    /// with 1009. At most [`capstan::websocket::MAX_MESSAGE_LIMIT`].
    pub max_ws_message: usize,
    /// How long a visitor has to send a whole request head, counted from when the gateway
    /// starts waiting for it: the connection opening, or the previous response ending. So
    /// it also closes idle keep-alive connections, and slowloris visitors.
    pub header_timeout: Duration,
    /// The largest request head a visitor may send, in bytes; a bigger one gets 431.
    pub max_header_bytes: usize,
    /// Most open connections from one IP address, on the public port and on the RPC port
    /// each; more get 429 (or are closed, on the RPC port). 0: no limit.
    pub max_connections_per_ip: usize,
    /// The largest request body a visitor may send, in bytes; a bigger one gets 413. `None`:
    /// no limit.
    pub max_request_body: Option<u64>,
    /// Keep the `X-Forwarded-For` and `Forwarded` headers visitors send (append to them),
    /// for a gateway behind a proxy that sets them. Off by default: a visitor could claim
    /// any address.
    pub trust_forwarded: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            public_url: None,
            tokens: Vec::new(),
            max_inflight_per_tunnel: capstan::DEFAULT_MAX_INFLIGHT,
            grace: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(5),
            register_timeout: Duration::from_secs(10),
            bare_to_single_tunnel: false,
            drain_timeout: Duration::from_secs(10),
            max_ws_message: capstan::websocket::DEFAULT_MAX_MESSAGE,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_connections_per_ip: 1024,
            max_request_body: None,
            trust_forwarded: false,
        }
    }
}

impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            domain,
            public_url,
            tokens,
            max_inflight_per_tunnel,
            grace,
            heartbeat_interval,
            heartbeat_timeout,
            register_timeout,
            bare_to_single_tunnel,
            drain_timeout,
            max_ws_message,
            header_timeout,
            max_header_bytes,
            max_connections_per_ip,
            max_request_body,
            trust_forwarded,
        } = self;
        f.debug_struct("GatewayOptions")
            .field("domain", domain)
            .field("public_url", public_url)
            .field("tokens", &format_args!("<{} hidden>", tokens.len()))
            .field("max_inflight_per_tunnel", max_inflight_per_tunnel)
            .field("grace", grace)
            .field("heartbeat_interval", heartbeat_interval)
            .field("heartbeat_timeout", heartbeat_timeout)
            .field("register_timeout", register_timeout)
            .field("bare_to_single_tunnel", bare_to_single_tunnel)
            .field("drain_timeout", drain_timeout)
            .field("max_ws_message", max_ws_message)
            .field("header_timeout", header_timeout)
            .field("max_header_bytes", max_header_bytes)
            .field("max_connections_per_ip", max_connections_per_ip)
            .field("max_request_body", max_request_body)
            .field("trust_forwarded", trust_forwarded)
            .finish()
    }
}

/// What the whole gateway shares; lives on its single thread.
pub(crate) struct State {
    pub(crate) options: GatewayOptions,
    pub(crate) registry: RefCell<registry::Registry>,
    /// Scheme and host of the public URL, e.g. ("http", "localhost:8080").
    public_scheme: String,
    /// `public_scheme` as the `X-Forwarded-Proto` value, made once.
    pub(crate) forwarded_proto: Option<http::HeaderValue>,
    public_host: String,
    next_session: Cell<u64>,
    /// Owns every tunnel session task; cancelled after the HTTP side drained.
    pub(crate) sessions: TaskTracker,
    /// Owns every visitor WebSocket pump.
    pub(crate) sockets: TaskTracker,
    /// Owns the `fetch` calls left to finish after their visitor got the whole body.
    pub(crate) finishing: TaskTracker,
    /// Ends sessions and closes visitor sockets with 1001.
    pub(crate) stop_sessions: CancellationToken,
    pub(crate) counters: Counters,
    /// Open connections per IP address, for `max_connections_per_ip`.
    pub(crate) per_ip: RefCell<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// Live counts of a gateway's sockets, capabilities and connections. Cheap to clone and
/// `Send`, so a test or health check on another thread can read and wait on them.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Visitor WebSockets being pumped.
    pub websockets: capstan::gauge::Gauge,
    /// `WebSocketHandle` capabilities for visitor sockets not yet released by tunnels.
    pub socket_handles: capstan::gauge::Gauge,
    /// Tunnel connections (WebSocket or raw RPC).
    pub sessions: capstan::gauge::Gauge,
}

impl State {
    /// A gateway's state, before it serves; `addr` is its public listener's.
    pub(crate) fn new(options: GatewayOptions, addr: SocketAddr) -> Self {
        let (public_scheme, public_host) = public_base(&options, addr);
        let registry = registry::Registry::new(options.grace, options.max_inflight_per_tunnel);
        Self {
            options,
            registry: RefCell::new(registry),
            forwarded_proto: http::HeaderValue::from_str(&public_scheme).ok(),
            public_scheme,
            public_host,
            next_session: Cell::new(1),
            sessions: TaskTracker::new(),
            sockets: TaskTracker::new(),
            finishing: TaskTracker::new(),
            stop_sessions: CancellationToken::new(),
            counters: Counters::default(),
            per_ip: RefCell::default(),
        }
    }

    /// The public URL of tunnel `name`.
    pub(crate) fn url_for(&self, name: &str) -> String {
        format!("{}://{name}.{}", self.public_scheme, self.public_host)
    }

    /// The sizes this gateway accepts, as it tells each tunnel at registration.
    pub(crate) fn limits(&self) -> capstan::limits::Limits {
        capstan::limits::Limits::with_ws_message(self.options.max_ws_message)
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        let id = self.next_session.get();
        self.next_session.set(id + 1);
        id
    }
}

/// A gateway bound to its public listener, ready to [`serve`](Gateway::serve).
pub struct Gateway {
    state: Rc<State>,
    listener: TcpListener,
    rpc_listener: Option<TcpListener>,
}

impl Gateway {
    /// A gateway that will serve visitors and tunnel WebSockets on `listener`.
    pub fn new(options: GatewayOptions, listener: TcpListener) -> io::Result<Self> {
        if options.max_ws_message > capstan::websocket::MAX_MESSAGE_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the WebSocket message cap may be at most {} bytes",
                    capstan::websocket::MAX_MESSAGE_LIMIT
                ),
            ));
        }
        let addr = listener.local_addr()?;
        Ok(Self {
            state: Rc::new(State::new(options, addr)),
            listener,
            rpc_listener: None,
        })
    }

    /// Also accept plain two-party Cap'n Proto over TCP on `listener` (for pycapnp, C++).
    pub fn with_rpc_listener(mut self, listener: TcpListener) -> Self {
        self.rpc_listener = Some(listener);
        self
    }

    /// The public address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The number of live tunnels.
    pub fn tunnel_count(&self) -> usize {
        self.state.registry.borrow().live_count()
    }

    /// Live counts of sockets, capabilities and tunnel connections.
    pub fn counters(&self) -> Counters {
        self.state.counters.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish for up to `drain_timeout`, closes visitor WebSockets with 1001, and closes
    /// every tunnel.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        listen::serve(self.state, self.listener, self.rpc_listener, shutdown).await
    }
}

fn public_base(options: &GatewayOptions, addr: SocketAddr) -> (String, String) {
    if let Some(url) = &options.public_url {
        let url = url.trim_end_matches('/');
        if let Some((scheme, host)) = url.split_once("://") {
            return (scheme.to_owned(), host.to_owned());
        }
        return ("http".into(), url.to_owned());
    }
    let host = match addr.port() {
        80 => options.domain.clone(),
        port => format!("{}:{port}", options.domain),
    };
    ("http".into(), host)
}

#[cfg(test)]
mod tests {
    use super::GatewayOptions;

    #[test]
    fn debug_output_never_shows_a_token() {
        let options = GatewayOptions {
            tokens: vec!["s3cret-token".into()],
            ..GatewayOptions::default()
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<1 hidden>"), "{shown}");
    }
}
