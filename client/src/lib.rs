//! The capstan tunnel client: serves an origin at a public URL through a capstan gateway.
//!
//! # Layout
//! - [`origin`]: the [`Origin`] trait: where requests and WebSockets go.
//! - [`dial`]: [`LocalPort`] and [`ServiceOrigin`] (an in-process hyper/tower service).
//! - `capability`: [`CapabilityOrigin`], a Cap'n Proto capability served over WebSockets.
//! - `fetcher`: the `Fetcher` capability; one `fetch` call per visitor request.
//! - `websocket`: one tunneled WebSocket at the origin's end.
//! - `connect`: dialing the gateway and registering a name.
//! - [`tunnel`]: [`Tunnel`]: heartbeat, reconnect with backoff, graceful drain.
//! - [`embedded`]: the in-process gateway behind a bare `capstan 3000`.
//! - `thread`: [`TunnelThread`], a tunnel on a thread of its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), capstan_client::ConnectError> {
//! use capstan_client::{ClientOptions, LocalPort, Tunnel};
//! let options = ClientOptions::new("http://127.0.0.1:8080");
//! let tunnel = Tunnel::connect(options, LocalPort::new("localhost:3000")).await?;
//! println!("{}", tunnel.url());
//! tunnel.run(std::future::pending()).await
//! # }
//! ```
//! A tunnel runs on a `tokio::task::LocalSet`: capnp-rpc is single-threaded.

mod capability;
mod connect;
pub mod dial;
pub mod embedded;
mod fetcher;
pub mod origin;
mod thread;
pub mod tunnel;
mod websocket;

use std::time::Duration;

pub use capability::CapabilityOrigin;
pub use capstan::capstan_capnp::RegisterError;
pub use connect::ConnectError;
pub use dial::{LocalPort, ServiceOrigin};
pub use origin::{Origin, OriginError};
pub use thread::TunnelThread;
pub use tunnel::Tunnel;

/// Live counts of a tunnel's WebSockets and capabilities, readable from any thread.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Origin WebSockets being pumped.
    pub websockets: capstan::gauge::Gauge,
    /// `WebSocketHandle` capabilities for origin sockets not yet released by the gateway.
    pub socket_handles: capstan::gauge::Gauge,
}

/// How a tunnel connects. `ClientOptions::new(gateway)` gives the defaults.
///
/// Its `Debug` never shows the token.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The gateway: `http://HOST:PORT` (WebSocket on the public port) or `tcp://HOST:PORT`
    /// (its raw RPC port).
    pub gateway: String,
    /// The name to serve at; `None` lets the gateway choose one.
    pub name: Option<String>,
    /// The gateway's token, or "" for an open gateway.
    pub token: String,
    /// How often the gateway is pinged.
    pub heartbeat_interval: Duration,
    /// An unanswered ping after this long drops the connection and reconnects.
    pub heartbeat_timeout: Duration,
    /// The longest wait between reconnect attempts.
    pub max_backoff: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// The largest WebSocket message the origin may send; a bigger one closes that
    /// socket with 1009.
    pub max_ws_message: usize,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            gateway,
            name,
            token,
            heartbeat_interval,
            heartbeat_timeout,
            max_backoff,
            drain_timeout,
            max_ws_message,
        } = self;
        let token = if token.is_empty() { "" } else { "<hidden>" };
        f.debug_struct("ClientOptions")
            .field("gateway", gateway)
            .field("name", name)
            .field("token", &token)
            .field("heartbeat_interval", heartbeat_interval)
            .field("heartbeat_timeout", heartbeat_timeout)
            .field("max_backoff", max_backoff)
            .field("drain_timeout", drain_timeout)
            .field("max_ws_message", max_ws_message)
            .finish()
    }
}

impl ClientOptions {
    /// Defaults for a tunnel to `gateway`.
    pub fn new(gateway: impl Into<String>) -> Self {
        Self {
            gateway: gateway.into(),
            name: None,
            token: String::new(),
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            max_ws_message: capstan::websocket::DEFAULT_MAX_MESSAGE,
        }
    }

    /// Sets the name to register.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The sizes this end accepts, as it declares them at registration.
    pub(crate) fn limits(&self) -> capstan::limits::Limits {
        capstan::limits::Limits::with_ws_message(self.max_ws_message)
    }

    /// Sets the token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::ClientOptions;

    #[test]
    fn debug_output_never_shows_the_token() {
        let shown = format!("{:?}", ClientOptions::new("http://g").token("s3cret-token"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
