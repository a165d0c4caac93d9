//! An origin that serves a Cap'n Proto capability to every WebSocket visitor.

use std::future::Future;

use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::transport::{rpc_system, WebSocketIo};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::origin::{Handshake, Origin, OriginBody, OriginError, OriginIo, RequestBody};

/// Bytes buffered each way between the tunnel and the capability's RPC connection.
const PIPE_CAPACITY: usize = 256 * 1024;

/// Serves the capability that `bootstrap` makes to each visitor who opens a WebSocket: the
/// socket's binary messages carry a two-party Cap'n Proto connection (see
/// [`capstan::transport::WebSocketIo`]), and the visitor's bootstrap is the capability.
///
/// Plain HTTP requests get a short text saying so. Runs on the tunnel's `LocalSet`, so the
/// capability need not be `Send`.
pub struct CapabilityOrigin<F> {
    bootstrap: F,
}

impl<F> CapabilityOrigin<F>
where
    F: Fn() -> capnp::capability::Client + 'static,
{
    /// Serves a fresh `bootstrap()` per WebSocket connection.
    pub fn new(bootstrap: F) -> Self {
        Self { bootstrap }
    }
}

impl<F> Origin for CapabilityOrigin<F>
where
    F: Fn() -> capnp::capability::Client + 'static,
{
    fn serve(
        &self,
        _: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<OriginBody>, OriginError>> + 'static {
        let body = Full::new(Bytes::from_static(
            b"This URL serves a Cap'n Proto capability: open a WebSocket and speak two-party RPC in binary messages.\n",
        ));
        let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        std::future::ready(Ok(response))
    }

    fn connect_websocket(
        &self,
        request: Request<()>,
        max_message: usize,
    ) -> impl Future<Output = Result<Handshake, OriginError>> + 'static {
        let bootstrap = (self.bootstrap)();
        async move {
            // The tunnel's end and ours of an in-memory WebSocket.
            let (theirs, ours) = tokio::io::duplex(PIPE_CAPACITY);
            let config = Some(capstan::websocket::config(max_message));
            let theirs: Box<dyn OriginIo> = Box::new(theirs);
            let (tunnel_end, local_end) = tokio::join!(
                WebSocketStream::from_raw_socket(theirs, Role::Client, config),
                WebSocketStream::from_raw_socket(ours, Role::Server, config),
            );
            let rpc = rpc_system(WebSocketIo::new(local_end), Side::Server, Some(bootstrap));
            // Owned by the socket: it ends when the visitor's connection does.
            tokio::task::spawn_local(async move {
                if let Err(err) = rpc.await {
                    tracing::debug!(%err, "capability connection ended");
                }
            });
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            if let Some(protocol) = request.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL) {
                // Accept the first offered subprotocol, if any: the bytes are ours anyway.
                let first = protocol
                    .to_str()
                    .unwrap_or("")
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .trim();
                if let Ok(value) = http::HeaderValue::from_str(first) {
                    response
                        .headers_mut()
                        .insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
                }
            }
            Ok(Handshake::Accepted {
                response,
                socket: Box::new(tunnel_end),
            })
        }
    }

    fn describe(&self) -> String {
        "the capability server".into()
    }
}
