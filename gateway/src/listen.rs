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
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::body::GatewayBody;
use crate::error::ProxyError;
use crate::route::{route, Route};
use crate::{fetch, session, websocket, State};

/// How long to wait after a failed `accept` (e.g. out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// On shutdown, how long closing sockets and tunnel connections may take after the drain.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A visitor has this long to send its request head; stops idle sockets piling up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
        // Small requests and SSE events must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, peer, request).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let draining = draining.clone();
        connections.spawn_local(async move {
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
                let _ = stream.set_nodelay(true);
                session::spawn(state, stream.compat(), peer.to_string());
            }
            Err(err) => {
                warn!(%err, "accept failed on the RPC listener");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn handle(
    state: Rc<State>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<GatewayBody> {
    // Two Host headers make routing ambiguous; RFC 9112 section 3.2 requires a 400.
    if request
        .headers()
        .get_all(http::header::HOST)
        .iter()
        .nth(1)
        .is_some()
    {
        return ProxyError::BadRequest("more than one Host header".into()).into_response();
    }
    let result = match route(&state, &request) {
        Route::Connect => connect_tunnel(&state, peer, request),
        Route::Tunnel(tunnel) => {
            if websocket::is_upgrade(&request) {
                websocket::proxy(&state, tunnel, peer, request).await
            } else if request.headers().contains_key(UPGRADE) {
                Err(ProxyError::Unsupported(
                    "only WebSocket upgrades are carried".into(),
                ))
            } else {
                fetch::proxy(&state, tunnel, peer, request).await
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

/// Completes a tunnel client's WebSocket handshake and starts its session.
fn connect_tunnel(
    state: &Rc<State>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<GatewayBody>, ProxyError> {
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
                let config = WebSocketConfig::default()
                    .max_message_size(Some(capstan::MAX_RPC_MESSAGE + 1024))
                    .max_frame_size(Some(capstan::MAX_RPC_MESSAGE + 1024));
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session::spawn(
                    &state2,
                    capstan::transport::WebSocketIo::new(socket),
                    peer.to_string(),
                );
            }
            Err(err) => debug!(%err, %peer, "tunnel upgrade failed"),
        }
    });
    Ok(websocket::switching_protocols(&key, http::HeaderMap::new()))
}
