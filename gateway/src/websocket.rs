//! One visitor WebSocket: `connectWebSocket` before the upgrade, and the visitor's socket as a capability.

use std::rc::Rc;

use capstan::capstan_capnp::web_socket_handle;
use capstan::gauge::GaugeGuard;
use capstan::websocket as ws;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::Message;

use crate::body::{full, GatewayBody};
use crate::error::ProxyError;
use crate::fetch::forwarding;
use crate::listen::Visitor;
use crate::registry::Tunnel;
use crate::State;

mod pump;

use pump::Pump;

/// Messages from the tunnel waiting for the visitor's socket, at most. tokio allocates a
/// block of 32 slots per channel whatever the bound, so 32 costs no more than 2; and a
/// burst of 32 small messages shares one write to the visitor (pipelined messages went
/// from about 60k to 88k a second against a bound of 2).
const OUTBOUND_DEPTH: usize = 32;

/// Bytes of messages waiting for the visitor's socket, at most; a bigger message waits
/// for the queue to empty. With the capnp stream window, this bounds what a visitor that
/// reads slowly can make the gateway hold.
const OUTBOUND_BYTES: usize = 256 * 1024;

/// True when `request` asks for a WebSocket (as opposed to another upgrade).
pub(crate) fn is_upgrade<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The visitor's `Sec-WebSocket-Key`, once the handshake is checked to be one we can finish.
pub(crate) fn handshake_key<B>(request: &Request<B>) -> Result<HeaderValue, ProxyError> {
    let version = request.headers().get(SEC_WEBSOCKET_VERSION);
    if version.is_none_or(|v| v != "13") {
        return Err(ProxyError::BadRequest(
            "WebSocket version must be 13".into(),
        ));
    }
    request
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or_else(|| ProxyError::BadRequest("missing Sec-WebSocket-Key".into()))
}

/// The 101 that completes a visitor's handshake for `key`, with `headers` besides.
pub(crate) fn switching_protocols(
    key: &HeaderValue,
    mut headers: HeaderMap,
) -> Response<GatewayBody> {
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    let mut response = Response::new(full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = headers;
    response
}

/// Opens the origin's socket through `tunnel`, and only then answers the visitor: with
/// 101 and a pump task, or with the origin's refusal as it was.
pub(crate) async fn proxy(
    state: &Rc<State>,
    tunnel: Rc<Tunnel>,
    visitor: Visitor,
    mut request: Request<Incoming>,
) -> Result<Response<GatewayBody>, ProxyError> {
    let Visitor {
        addr: visitor,
        slot,
    } = visitor;
    let key = handshake_key(&request)?;
    // The handshake counts as an in-flight request; the open socket does not.
    let permit = tunnel.admit()?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, _) = request.into_parts();
    let forwarded = forwarding(state, &mut parts.headers, &parts.uri, visitor);
    for name in ws::PER_HOP_HEADERS {
        parts.headers.remove(name);
    }
    // What both the gateway and this tunnel accept, each way.
    let max_message = tunnel.limits.ws_message;
    let (public, outbound) = PublicSocket::client(state, max_message);
    let mut call = tunnel.fetcher.connect_web_socket_request();
    {
        let mut params = call.get();
        let mut wire = params.reborrow().init_request();
        wire.set_method(parts.method.as_str());
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        wire.set_path(path.as_bytes());
        forwarded.write(&parts.headers, |n| wire.reborrow().init_headers(n));
        params.set_public_socket(public);
    }
    let answer = call.send().promise.await.map_err(ProxyError::from_capnp)?;
    drop(permit);
    let protocol = ProxyError::bad_answer;
    let answer = answer.get().map_err(protocol)?;
    let head = answer.get_response().map_err(protocol)?;
    let (status, mut headers) = capstan::headers::read_head(head).map_err(protocol)?;
    if !answer.has_local_socket() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ProxyError::Protocol("a 101 answer without a socket".into()));
        }
        // The origin refused: the visitor gets its answer as is, at once.
        let body = head.get_body().map_err(protocol)?;
        if body.len() > capstan::MAX_CHUNK {
            let err = capstan::body::over_limit("an inline body", body.len(), capstan::MAX_CHUNK);
            return Err(protocol(err));
        }
        let body = bytes::Bytes::copy_from_slice(body);
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(response);
    }
    let local = answer.get_local_socket().map_err(protocol)?;

    for name in ws::PER_HOP_HEADERS {
        headers.remove(name);
    }
    let response = switching_protocols(&key, headers);

    let pump = Pump {
        local,
        outbound,
        max_message,
        _slot: slot,
        stop: state.stop_sessions.clone(),
        _live: state.counters.websockets.guard(),
    };
    // Owned by the socket tracker; ends on close, on either side's loss, or on shutdown.
    state.sockets.spawn_local(pump.run(on_upgrade));
    Ok(response)
}

/// What the tunnel asks the visitor's socket to do.
enum Outbound {
    Message(Message),
    Close(u16, String),
    /// The tunnel sent a message over the cap: 1009 to the visitor and to the tunnel.
    TooBig,
}

/// The visitor's socket as a capability: the tunnel's `send` calls land here.
struct PublicSocket {
    tx: mpsc::Sender<Outbound>,
    /// Permits for [`OUTBOUND_BYTES`]; the pump gives them back as it writes.
    budget: Rc<Semaphore>,
    /// The largest message both ends accept; a bigger `send` closes the socket with 1009.
    max_message: usize,
    _live: GaugeGuard,
}

/// What a message takes from the outbound byte budget.
fn cost(message: &Message) -> u32 {
    // Both fit in u32: OUTBOUND_BYTES is 256 KiB.
    message.len().min(OUTBOUND_BYTES) as u32
}

impl PublicSocket {
    fn client(state: &State, max_message: usize) -> (web_socket_handle::Client, Queue) {
        let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
        let budget = Rc::new(Semaphore::new(OUTBOUND_BYTES));
        let client = capnp_rpc::new_client(Self {
            tx,
            budget: budget.clone(),
            max_message,
            _live: state.counters.socket_handles.guard(),
        });
        (client, Queue { rx, budget })
    }
}

/// The pump's end of a [`PublicSocket`]'s queue.
struct Queue {
    rx: mpsc::Receiver<Outbound>,
    budget: Rc<Semaphore>,
}

impl Drop for Queue {
    /// Fails the `send` calls still waiting for budget: nothing will write them.
    fn drop(&mut self) {
        self.budget.close();
    }
}

impl web_socket_handle::Server for PublicSocket {
    async fn send(
        self: Rc<Self>,
        params: web_socket_handle::SendParams,
    ) -> Result<(), capnp::Error> {
        let message = ws::read_message(params.get()?.get_message()?)?;
        let closed = || capnp::Error::failed("the visitor's socket is closed".into());
        if message.len() > self.max_message {
            // A peer that ignored the agreed limit: the socket closes with 1009 on both
            // sides, in line behind the messages before it, and this `send` fails, since
            // the message is not delivered.
            if let Ok(permit) = self.budget.acquire().await {
                permit.forget();
                let _ = self.tx.send(Outbound::TooBig).await;
            }
            return Err(ws::too_big(message.len(), self.max_message));
        }
        // Waits while the visitor is slow to read: that is the backpressure.
        self.budget
            .acquire_many(cost(&message))
            .await
            .map_err(|_| closed())?
            .forget();
        self.tx
            .send(Outbound::Message(message))
            .await
            .map_err(|_| closed())
    }

    async fn close(
        self: Rc<Self>,
        params: web_socket_handle::CloseParams,
        _: web_socket_handle::CloseResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let reason = params.get_reason()?.to_string()?;
        // In line behind the `send` calls still waiting for budget, so that the close
        // cannot overtake their messages. A socket that is already gone needs no close.
        let Ok(permit) = self.budget.acquire().await else {
            return Ok(());
        };
        permit.forget();
        let _ = self
            .tx
            .send(Outbound::Close(params.get_code(), reason))
            .await;
        Ok(())
    }
}
