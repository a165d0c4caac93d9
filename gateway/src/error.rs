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
    /// Downstream: the request body is over the gateway's limit.
    #[error("capstan: the request body is over the limit of {0} bytes")]
    TooLarge(u64),
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
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// A failed `fetch` or `connectWebSocket` call: the tunnel's exception, or a lost
    /// connection. One of the two places where capnp errors meet HTTP (see [`visible`]).
    pub(crate) fn from_capnp(err: capnp::Error) -> Self {
        let text = visible(&err);
        if err.kind == capnp::ErrorKind::Disconnected {
            return Self::Tunnel(format!("the tunnel disconnected ({text})"));
        }
        Self::Tunnel(text)
    }

    /// An answer the gateway cannot use: a bad status, header or body from the tunnel.
    pub(crate) fn bad_answer(err: capnp::Error) -> Self {
        Self::Protocol(visible(&err))
    }

    /// The plain-text response a visitor sees.
    pub(crate) fn into_response(self) -> Response<GatewayBody> {
        let body = format!("{self}\n");
        let mut response = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if let Self::TunnelBusy { .. } = self {
            // A busy tunnel frees up soon: ask well-behaved clients to come back.
            response = response.header(header::RETRY_AFTER, "1");
        }
        if let Self::BadRequest(_) | Self::TooLarge(_) = self {
            // What follows on the connection can no longer be trusted to be framed right.
            response = response.header(header::CONNECTION, "close");
        }
        response
            .body(crate::body::full(Bytes::from(body)))
            .expect("a static status and header make a valid response")
    }
}

/// Most bytes of a tunnel's exception text that a visitor sees.
const VISIBLE_TEXT: usize = 300;

/// A tunnel's exception text as a visitor may see it: capnp's "remote exception:"
/// prefixes stripped, one line only (the last of a Python traceback, which pycapnp sends
/// whole; the first of anything else), control
/// characters replaced, and at most [`VISIBLE_TEXT`] bytes. The full text is logged.
fn visible(err: &capnp::Error) -> String {
    let mut text = err.extra.as_str();
    while let Some(rest) = text.strip_prefix("remote exception: ") {
        text = rest;
    }
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    // A Python traceback ends with the exception itself; the rest is the peer's code.
    let line = if text.starts_with("Traceback (most recent call last)") {
        lines.next_back()
    } else {
        lines.next()
    };
    let line = line.unwrap_or("");
    let mut shown: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if shown.len() > VISIBLE_TEXT || text.trim() != line {
        tracing::debug!(full = %err.extra, "tunnel exception, shortened for the visitor");
    }
    if shown.len() > VISIBLE_TEXT {
        let mut end = VISIBLE_TEXT;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visitors_see_one_short_clean_line_of_the_tunnels_text() {
        let traceback = "remote exception: remote exception: Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: secret";
        let shown = visible(&capnp::Error::failed(traceback.into()));
        assert_eq!(shown, "ValueError: secret");
        let long = format!("{}\u{7}é", "x".repeat(400));
        let shown = visible(&capnp::Error::failed(long));
        assert!(shown.len() <= VISIBLE_TEXT + '…'.len_utf8() && shown.ends_with('…'));
        let bell = visible(&capnp::Error::failed("a\u{7}b".into()));
        assert_eq!(bell, "a b");
    }
}
