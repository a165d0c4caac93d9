//! Accepting: visitors and tunnel WebSockets on the public port, raw RPC on its own, and a
//! graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use http::header::UPGRADE;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::body::GatewayBody;
use crate::error::ProxyError;
use crate::limit::{self, IpSlot};
use crate::route::{route, Route};
use crate::{fetch, session, websocket, State};

/// How long to wait after a failed `accept` (e.g. out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// On shutdown, how long closing sockets and tunnel connections may take after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) async fn serve(
    state: Rc<State>,
    listener: TcpListener,
    rpc_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // Visitor connections: told to finish their current request on shutdown, then waited for.
    let draining = CancellationToken::new();
    let connections = TaskTracker::new();
    let rpc_accept = async {
        match &rpc_listener {
            Some(listener) => accept_rpc(&state, listener).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = accept_http(&state, &listener, &connections, &draining) => {}
        () = rpc_accept => {}
        () = shutdown => info!("shutting down: draining in-flight requests"),
    }
    drop(listener);
    drop(rpc_listener);
    let drain = state.options.drain_timeout;
    draining.cancel();
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        warn!(
            ?drain,
            "requests still in flight after the drain timeout; cutting them"
        );
    }
    state.stop_sessions.cancel();
    state.sessions.close();
    state.sockets.close();
    state.finishing.close();
    // Sockets and sessions were told to close; a peer that never answers its close
    // handshake must not hold the process past this.
    let closed = async {
        state.sessions.wait().await;
        state.sockets.wait().await;
        state.finishing.wait().await;
    };
    if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
        warn!("tunnels or sockets still closing after {CLOSE_TIMEOUT:?}; dropping them");
    }
    Ok(())
}

async fn accept_http(
    state: &Rc<State>,
    listener: &TcpListener,
    connections: &TaskTracker,
    draining: &CancellationToken,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = IpSlot::take(state, peer.ip()) else {
            // Owned with the visitor connections, and over within a second.
            connections.spawn_local(limit::refuse_http(stream));
            continue;
        };
        // Shared with the WebSockets and tunnel sessions upgraded from this connection,
        // which outlive it.
        let slot = Rc::new(slot);
        // Small requests and SSE events must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let options = &state.options;
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_timeout)
            .max_header_size(options.max_header_bytes)
            .serve_connection(
                TokioIo::new(stream),
                service_fn({
                    let (state, slot) = (state.clone(), slot.clone());
                    move |request| {
                        let visitor = Visitor {
                            addr: peer,
                            slot: slot.clone(),
                        };
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, visitor, request).await) }
                    }
                }),
            )
            .with_upgrades();
        let draining = draining.clone();
        connections.spawn_local(async move {
            // Counts until the connection, upgraded or not, is gone.
            let _slot = slot;
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = draining.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = result {
                debug!(%err, %peer, "visitor connection ended with an error");
            }
        });
    }
}

async fn accept_rpc(state: &Rc<State>, listener: &TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = IpSlot::take(state, peer.ip()) else {
                    continue; // Dropped: closed at once.
                };
                let _ = stream.set_nodelay(true);
                session::spawn(state, stream.compat(), peer.to_string(), Rc::new(slot));
            }
            Err(err) => {
                warn!(%err, "accept failed on the RPC listener");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Who sent a request: its address, and its connection's count against that address,
/// which an upgraded socket or tunnel session keeps.
pub(crate) struct Visitor {
    pub(crate) addr: SocketAddr,
    pub(crate) slot: Rc<IpSlot>,
}

async fn handle(
    state: Rc<State>,
    visitor: Visitor,
    request: Request<Incoming>,
) -> Response<GatewayBody> {
    if let Err(err) = check_framing(&request) {
        debug!(%err, "request refused");
        return err.into_response();
    }
    let result = match route(&state, &request) {
        Route::Connect => connect_tunnel(&state, visitor, request),
        Route::Tunnel(tunnel) => {
            if websocket::is_upgrade(&request) {
                websocket::proxy(&state, tunnel, visitor, request).await
            } else if request.headers().contains_key(UPGRADE) {
                Err(ProxyError::Unsupported(
                    "only WebSocket upgrades are carried".into(),
                ))
            } else {
                fetch::proxy(&state, tunnel, visitor.addr, request).await
            }
        }
        Route::Offline(name) => Err(ProxyError::TunnelOffline(name)),
        Route::Unknown(host) => Err(ProxyError::UnknownHost(host)),
    };
    result.unwrap_or_else(|err| {
        debug!(%err, "request failed");
        err.into_response()
    })
}

/// Refuses requests whose routing or framing two parties could read differently: the
/// root of request smuggling through a proxy.
fn check_framing<B>(request: &Request<B>) -> Result<(), ProxyError> {
    // A gateway is no forward proxy: nothing tunnels through it to elsewhere.
    if request.method() == http::Method::CONNECT {
        return Err(ProxyError::Unsupported(
            "CONNECT: this is not a proxy".into(),
        ));
    }
    let headers = request.headers();
    // Two Host headers make routing ambiguous; RFC 9112 section 3.2 requires a 400.
    if headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    // Content-Length beside Transfer-Encoding never gets here: hyper drops it, frames the
    // body by Transfer-Encoding and closes the connection after the answer (RFC 9112
    // section 6.3), so no request can hide behind the body (tests/public_port.rs).
    debug_assert!(
        !(headers.contains_key(http::header::TRANSFER_ENCODING)
            && headers.contains_key(http::header::CONTENT_LENGTH))
    );
    Ok(())
}

/// Completes a tunnel client's WebSocket handshake and starts its session.
fn connect_tunnel(
    state: &Rc<State>,
    visitor: Visitor,
    mut request: Request<Incoming>,
) -> Result<Response<GatewayBody>, ProxyError> {
    let Visitor { addr: peer, slot } = visitor;
    if !websocket::is_upgrade(&request) {
        return Err(ProxyError::BadRequest(
            "this is the tunnel endpoint; connect to it with a capstan client".into(),
        ));
    }
    let key = websocket::handshake_key(&request)?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let state2 = state.clone();
    // Owned by the session tracker, which the shutdown closes and waits for.
    state.sessions.spawn_local(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(capstan::transport::websocket_config()),
                )
                .await;
                session::spawn(
                    &state2,
                    capstan::transport::WebSocketIo::new(socket),
                    peer.to_string(),
                    slot,
                );
            }
            Err(err) => debug!(%err, %peer, "tunnel upgrade failed"),
        }
    });
    Ok(websocket::switching_protocols(&key, http::HeaderMap::new()))
}
