//! Origins: where the tunnel sends each request and WebSocket, and what comes back.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use capstan::body::{BodyError, ChannelBody};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

/// Errors an origin's response body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of an origin's response.
pub type OriginBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why an origin gave no response.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Nothing answered at the origin's address.
    #[error("cannot reach the origin at {origin}: {reason}")]
    Unreachable {
        /// The origin's address, e.g. `localhost:3000`.
        origin: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The origin was reached but the exchange failed.
    #[error("the origin at {origin} failed: {reason}")]
    Failed {
        /// The origin's address, or the service's name.
        origin: String,
        /// What went wrong.
        reason: String,
    },
}

/// A byte stream to an origin: a TCP socket or an in-memory pipe.
pub trait OriginIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> OriginIo for T {}

/// An open WebSocket to the origin.
pub type OriginSocket = WebSocketStream<Box<dyn OriginIo>>;

/// How an origin answered a WebSocket handshake.
pub enum Handshake {
    /// Upgraded: the origin's 101 head and the open socket.
    Accepted {
        /// The 101 response, with the chosen `Sec-WebSocket-Protocol`.
        response: Response<()>,
        /// The origin's end of the socket.
        socket: Box<OriginSocket>,
    },
    /// Refused: the origin's whole answer, which the visitor gets as is.
    Refused(Response<Bytes>),
}

/// Where a tunnel sends its requests.
///
/// [`LocalPort`](crate::LocalPort) forwards to a local address and
/// [`ServiceOrigin`](crate::ServiceOrigin) to an in-process hyper or tower service (an
/// axum `Router`, say) with no port at all. Implement it to serve something else.
pub trait Origin: 'static {
    /// Serves one visitor request. The request carries the visitor's method, raw path,
    /// headers (with `X-Forwarded-*`) and a streaming body.
    fn serve(
        &self,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<OriginBody>, OriginError>> + 'static;

    /// Opens a WebSocket for the visitor's upgrade `request` (its headers include the
    /// offered `Sec-WebSocket-Protocol`). Messages over `max_message` bytes must fail the
    /// socket's reads with a capacity error.
    fn connect_websocket(
        &self,
        request: Request<()>,
        max_message: usize,
    ) -> impl Future<Output = Result<Handshake, OriginError>> + 'static;

    /// A short description for logs, e.g. `localhost:3000`.
    fn describe(&self) -> String;
}

/// A visitor's request body as the origin receives it: whole, or streaming from the
/// gateway. A stream that breaks off ends in an error, never a short success.
#[derive(Debug)]
pub struct RequestBody(Inner);

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Stream(ChannelBody),
}

impl RequestBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        Self(Inner::Full((!bytes.is_empty()).then_some(bytes)))
    }

    pub(crate) fn stream(body: ChannelBody) -> Self {
        Self(Inner::Stream(body))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.0 {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Stream(body) => body.size_hint(),
        }
    }
}
