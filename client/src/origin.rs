//! Origins: where the tunnel sends each request. A local port, or any in-process service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use capstan::body::{BodyError, ChannelBody};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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

/// Where a tunnel sends its requests.
///
/// [`LocalPort`] forwards to a local address; implement it for an in-process service to
/// serve it with no port at all.
pub trait Origin: 'static {
    /// Serves one visitor request. The request carries the visitor's method, raw path,
    /// headers (with `X-Forwarded-*`) and a streaming body.
    fn serve(
        &self,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<OriginBody>, OriginError>> + 'static;

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

/// An origin at a local TCP address, reached with a pooled HTTP/1.1 client.
#[derive(Clone)]
pub struct LocalPort {
    authority: String,
    client: Client<HttpConnector, RequestBody>,
}

impl LocalPort {
    /// Forwards to `authority`, e.g. `localhost:3000` or `127.0.0.1:8000`.
    ///
    /// `localhost` tries both `::1` and `127.0.0.1`, as a browser would.
    pub fn new(authority: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            authority: authority.into(),
            client,
        }
    }
}

impl Origin for LocalPort {
    fn serve(
        &self,
        mut request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<OriginBody>, OriginError>> + 'static {
        let client = self.client.clone();
        let authority = self.authority.clone();
        async move {
            let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let uri = Uri::try_from(format!("http://{authority}{path}")).map_err(|err| {
                OriginError::Failed {
                    origin: authority.clone(),
                    reason: format!("bad request target: {err}"),
                }
            })?;
            *request.uri_mut() = uri;
            let response = client.request(request).await.map_err(|err| {
                let reason = std::error::Error::source(&err)
                    .map_or_else(|| err.to_string(), |source| source.to_string());
                if err.is_connect() {
                    OriginError::Unreachable {
                        origin: authority.clone(),
                        reason,
                    }
                } else {
                    OriginError::Failed {
                        origin: authority.clone(),
                        reason,
                    }
                }
            })?;
            Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
        }
    }

    fn describe(&self) -> String {
        self.authority.clone()
    }
}
