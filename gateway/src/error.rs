//! Every way a proxied request can fail, and the one HTTP answer each gets.

use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::body::GatewayBody;

/// A request the gateway could not carry through. Each variant knows whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream: no tunnel is registered for this host.
    #[error("capstan: no tunnel is registered for host {0:?}")]
    UnknownHost(String),
    /// Upstream: the name is held for a tunnel that is reconnecting.
    #[error("capstan: the tunnel {0:?} is offline; it may be reconnecting")]
    TunnelOffline(String),
    /// Upstream: the tunnel has as many requests in flight as it may.
    #[error("capstan: the tunnel {name:?} is busy with {limit} requests; try again")]
    TunnelBusy {
        /// The tunnel's name.
        name: String,
        /// The per-tunnel limit that was reached.
        limit: usize,
    },
    /// Upstream: the tunnel answered with an exception, or the connection died. The
    /// tunnel's message names the cause, e.g. an origin port that refused.
    #[error("capstan: the tunnel failed: {0}")]
    Tunnel(String),
    /// Upstream: the tunnel broke the protocol.
    #[error("capstan: the tunnel sent a bad answer: {0}")]
    Protocol(String),
    /// Downstream: the visitor's request could not be read.
    #[error("capstan: bad request: {0}")]
    BadRequest(String),
    /// Downstream: the visitor tried something this gateway does not carry.
    #[error("capstan: {0}")]
    Unsupported(String),
}

impl ProxyError {
    /// The status a visitor gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownHost(_) => StatusCode::NOT_FOUND,
            Self::TunnelOffline(_) | Self::Tunnel(_) | Self::Protocol(_) => StatusCode::BAD_GATEWAY,
            Self::TunnelBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Converts the single place where capnp errors meet HTTP: strips capnp's
    /// "remote exception:" prefixes so the visitor reads the tunnel's own words.
    pub(crate) fn from_capnp(err: capnp::Error) -> Self {
        let text = err
            .extra
            .trim_start_matches("remote exception: ")
            .to_owned();
        if err.kind == capnp::ErrorKind::Disconnected {
            return Self::Tunnel(format!("the tunnel disconnected ({text})"));
        }
        Self::Tunnel(text)
    }

    /// The plain-text response a visitor sees.
    pub(crate) fn into_response(self) -> Response<GatewayBody> {
        let body = format!("{self}\n");
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(crate::body::full(Bytes::from(body)))
            .expect("a static status and header make a valid response")
    }
}
