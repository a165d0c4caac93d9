//! Origins reached over HTTP/1.1: a local port, or an in-process service on an in-memory pipe.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::origin::{BoxError, Handshake, Origin, OriginBody, OriginError, OriginIo, RequestBody};

/// Bytes buffered each way in an in-process pipe.
const PIPE_CAPACITY: usize = 256 * 1024;

/// How an [`HttpOrigin`] opens a connection.
pub trait Dial: Clone + Send + Sync + 'static {
    /// Opens a new connection to the origin.
    fn dial(&self) -> impl Future<Output = io::Result<Box<dyn OriginIo>>> + Send + 'static;

    /// The origin's address or name, for logs and errors.
    fn describe(&self) -> String;
}

/// An origin spoken to over HTTP/1.1 on connections from `D`: pooled for requests, one
/// per WebSocket.
#[derive(Clone)]
pub struct HttpOrigin<D: Dial> {
    dial: D,
    client: Client<Connector<D>, RequestBody>,
}

/// An origin at a local TCP address, e.g. `localhost:3000`.
pub type LocalPort = HttpOrigin<TcpDial>;

/// An in-process hyper or tower service (an axum `Router`, say), served with no port.
pub type ServiceOrigin<S> = HttpOrigin<ServiceDial<S>>;

impl<D: Dial> HttpOrigin<D> {
    /// An origin reached through `dial`.
    pub fn with_dial(dial: D) -> Self {
        let client = Client::builder(TokioExecutor::new()).build(Connector(dial.clone()));
        Self { dial, client }
    }
}

impl LocalPort {
    /// Forwards to `authority`, e.g. `localhost:3000` or `127.0.0.1:8000`.
    ///
    /// `localhost` tries both `::1` and `127.0.0.1`, as a browser would.
    pub fn new(authority: impl Into<String>) -> Self {
        Self::with_dial(TcpDial(authority.into()))
    }
}

impl<S> ServiceOrigin<S>
where
    ServiceDial<S>: Dial,
{
    /// Serves `service` in process: each connection is an in-memory pipe to a hyper
    /// server running it, so upgrades (WebSockets) work as they would on a port.
    pub fn new(service: S) -> Self {
        Self::with_dial(ServiceDial(service))
    }
}

/// Dials a TCP address.
#[derive(Clone)]
pub struct TcpDial(String);

impl Dial for TcpDial {
    fn dial(&self) -> impl Future<Output = io::Result<Box<dyn OriginIo>>> + Send + 'static {
        let authority = self.0.clone();
        async move {
            let stream = tokio::net::TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn OriginIo>)
        }
    }

    fn describe(&self) -> String {
        self.0.clone()
    }
}

/// Runs a service on the far end of an in-memory pipe.
#[derive(Clone)]
pub struct ServiceDial<S>(S);

impl<S, B> Dial for ServiceDial<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn dial(&self) -> impl Future<Output = io::Result<Box<dyn OriginIo>>> + Send + 'static {
        let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
        let service = TowerToHyperService::new(self.0.clone());
        // Ends when our end of the pipe is dropped: the pipe is its owner.
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(theirs), service)
                .with_upgrades();
            if let Err(err) = connection.await {
                tracing::debug!(%err, "in-process connection ended with an error");
            }
        });
        std::future::ready(Ok(Box::new(ours) as Box<dyn OriginIo>))
    }

    fn describe(&self) -> String {
        "the in-process service".into()
    }
}

fn unreachable(origin: String, err: impl std::fmt::Display) -> OriginError {
    OriginError::Unreachable {
        origin,
        reason: err.to_string(),
    }
}

fn failed(origin: String, err: impl std::fmt::Display) -> OriginError {
    OriginError::Failed {
        origin,
        reason: err.to_string(),
    }
}

/// The URI a request goes to the pool with. The pool keys connections by authority, and
/// ours always dials the one origin, so the authority is a fixed placeholder.
fn pool_uri(target: &Uri, origin: &str) -> Result<Uri, OriginError> {
    let path = target.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::try_from(format!("http://origin{path}"))
        .map_err(|err| failed(origin.to_owned(), format!("bad request target: {err}")))
}

/// Names what went wrong with a request to `origin`: unreachable, or failed after connecting.
fn request_failed(origin: &str, err: &hyper_util::client::legacy::Error) -> OriginError {
    let reason = std::error::Error::source(err).map_or_else(|| err.to_string(), |s| s.to_string());
    if err.is_connect() {
        unreachable(origin.to_owned(), reason)
    } else {
        failed(origin.to_owned(), reason)
    }
}

impl<D: Dial> Origin for HttpOrigin<D> {
    fn serve(
        &self,
        mut request: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<OriginBody>, OriginError>> + 'static {
        let client = self.client.clone();
        let origin = self.dial.describe();
        async move {
            *request.uri_mut() = pool_uri(request.uri(), &origin)?;
            let response = client
                .request(request)
                .await
                .map_err(|err| request_failed(&origin, &err))?;
            Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
        }
    }

    fn connect_websocket(
        &self,
        request: Request<()>,
        max_message: usize,
    ) -> impl Future<Output = Result<Handshake, OriginError>> + 'static {
        let client = self.client.clone();
        let origin = self.dial.describe();
        async move {
            let (mut parts, ()) = request.into_parts();
            parts.uri = pool_uri(&parts.uri, &origin)?;
            // This hop's own handshake; the visitor's key stayed at the gateway.
            let key = generate_key();
            let headers = &mut parts.headers;
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            headers.insert(
                SEC_WEBSOCKET_KEY,
                HeaderValue::from_str(&key).expect("base64 is a valid header value"),
            );
            let request = Request::from_parts(parts, RequestBody::full(Bytes::new()));
            let mut response = client
                .request(request)
                .await
                .map_err(|err| request_failed(&origin, &err))?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                // Refused: keep the answer (its body cut to what fits inline).
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, capstan::MAX_CHUNK)
                    .collect()
                    .await
                    .map(|collected| collected.to_bytes())
                    .unwrap_or_default();
                return Ok(Handshake::Refused(Response::from_parts(parts, body)));
            }
            let accepted = response
                .headers()
                .get(SEC_WEBSOCKET_ACCEPT)
                .is_some_and(|accept| {
                    accept.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes()
                });
            if !accepted {
                return Err(failed(
                    origin,
                    "the origin's 101 has a wrong Sec-WebSocket-Accept",
                ));
            }
            let upgraded = hyper::upgrade::on(&mut response)
                .await
                .map_err(|err| failed(origin.clone(), format!("upgrade: {err}")))?;
            let io: Box<dyn OriginIo> = Box::new(TokioIo::new(upgraded));
            let socket = WebSocketStream::from_raw_socket(
                io,
                Role::Client,
                Some(capstan::websocket::config(max_message)),
            )
            .await;
            Ok(Handshake::Accepted {
                response: response.map(drop),
                socket: Box::new(socket),
            })
        }
    }

    fn describe(&self) -> String {
        self.dial.describe()
    }
}

/// Adapts a [`Dial`] to hyper's connector interface.
#[derive(Clone)]
pub struct Connector<D>(D);

/// A dialed connection, as hyper's pool wants it.
pub struct Dialed(TokioIo<Box<dyn OriginIo>>);

impl Connection for Dialed {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Dialed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Dialed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<D: Dial> tower_service::Service<Uri> for Connector<D> {
    type Response = Dialed;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let dial = self.0.dial();
        Box::pin(async move { Ok(Dialed(TokioIo::new(dial.await?))) })
    }
}
