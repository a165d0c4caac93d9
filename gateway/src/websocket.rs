//! One visitor WebSocket: `connectWebSocket` before the upgrade, then one pump each way.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use capstan::capstan_capnp::web_socket_handle;
use capstan::gauge::GaugeGuard;
use capstan::websocket::{self as ws, GOING_AWAY, TOO_BIG};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::body::{full, GatewayBody};
use crate::error::ProxyError;
use crate::fetch::{forwarding, write_headers};
use crate::limit::IpSlot;
use crate::listen::Visitor;
use crate::registry::Tunnel;
use crate::State;

/// Messages from the tunnel waiting for the visitor's socket, at most. tokio allocates a
/// block of 32 slots per channel whatever the bound, so 32 costs no more than 2; and a
/// burst of 32 small messages shares one write to the visitor (pipelined messages went
/// from about 60k to 88k a second against a bound of 2).
const OUTBOUND_DEPTH: usize = 32;

/// Bytes of messages waiting for the visitor's socket, at most; a bigger message waits
/// for the queue to empty. With the capnp stream window, this bounds what a visitor that
/// reads slowly can make the gateway hold.
const OUTBOUND_BYTES: usize = 256 * 1024;

/// After one direction closed, how long the other may take to finish its close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

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
        write_headers(&parts.headers, &forwarded, |n| {
            wire.reborrow().init_headers(n)
        });
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

/// What the inbound pump asks of the outbound one, which owns the visitor's sink.
enum Closing {
    /// Finish the close handshake the visitor started.
    Reply,
    /// Close the visitor's socket with this code and reason.
    Close(u16, &'static str),
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

struct Pump {
    local: web_socket_handle::Client,
    outbound: Queue,
    max_message: usize,
    /// The visitor's connection still counts against its address.
    _slot: Rc<IpSlot>,
    stop: CancellationToken,
    _live: GaugeGuard,
}

impl Pump {
    async fn run(self, on_upgrade: OnUpgrade) {
        let Self {
            local,
            outbound,
            max_message,
            stop,
            _live,
            _slot,
        } = self;
        let origin = OriginEnd::new(local);
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                debug!(%err, "visitor upgrade failed");
                origin.close(GOING_AWAY, "visitor connection lost").await;
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws::config(max_message)),
        )
        .await;
        let (mut sink, mut stream) = socket.split();
        // Lets the inbound pump ask the outbound one to close the visitor's socket.
        let (closing_tx, closing_rx) = oneshot::channel::<Closing>();
        let read_to_close = {
            let inbound = inbound(&mut stream, &origin, closing_tx);
            let outbound = outbound_pump(&mut sink, outbound, closing_rx, &stop, &origin);
            tokio::pin!(inbound, outbound);
            tokio::select! {
                read_to_close = &mut inbound => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, outbound).await;
                    read_to_close
                }
                () = &mut outbound => {
                    // A visitor that never answers our close is not waited on twice.
                    tokio::time::timeout(CLOSE_GRACE, inbound).await.unwrap_or(true)
                }
            }
        };
        if !read_to_close {
            if let Ok(socket) = sink.reunite(stream) {
                linger(socket, max_message).await;
            }
        }
    }
}

/// When the gateway stopped reading before the visitor's close frame (a message over the
/// cap, a tunnel that went away), reads and drops what the visitor still sends, until it
/// closes or for a short while: closing a socket with unread bytes resets it, and the
/// visitor could lose the close frame that says why.
async fn linger(mut socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, budget: usize) {
    let io = socket.get_mut();
    let _ = io.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let drain = async {
        let mut left = budget;
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// The origin's end, as the gateway holds it: tells the tunnel of a close at most once.
struct OriginEnd {
    local: web_socket_handle::Client,
    told: Cell<bool>,
}

impl OriginEnd {
    fn new(local: web_socket_handle::Client) -> Self {
        Self {
            local,
            told: Cell::new(false),
        }
    }

    /// Calls `close(code, reason)` on the origin's end, unless it was told already.
    async fn close(&self, code: u16, reason: &str) {
        if !self.told.replace(true) {
            let _ = ws::close(&self.local, code, reason).await;
        }
    }
}

type VisitorSink = SplitSink<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, Message>;
type VisitorStream = SplitStream<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>;

/// Visitor to origin: each message becomes one `send` on the origin's end. True when it
/// read the visitor's close frame (or the end of its connection), so that nothing of the
/// visitor's is left unread.
async fn inbound(
    stream: &mut VisitorStream,
    origin: &OriginEnd,
    closing: oneshot::Sender<Closing>,
) -> bool {
    let mut read_to_close = true;
    let (code, reason) = loop {
        match stream.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws::send(&origin.local, &message).await.is_err() {
                    let _ = closing.send(Closing::Close(GOING_AWAY, "the tunnel went away"));
                    return false;
                }
            }
            // Ping and pong are per hop; tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                // Answer the visitor's close now; the origin's answer is not needed.
                let _ = closing.send(Closing::Reply);
                break ws::from_frame(frame.as_ref());
            }
            Some(Err(WsError::Capacity(err))) => {
                debug!(%err, "visitor message over the cap");
                let _ = closing.send(Closing::Close(TOO_BIG, "message too big"));
                read_to_close = false;
                break (TOO_BIG, "message too big".to_owned());
            }
            Some(Err(_)) | None => break (GOING_AWAY, "visitor connection lost".to_owned()),
        }
    };
    origin.close(code, &reason).await;
    read_to_close
}

/// Origin to visitor: writes what the tunnel's `send` calls queued, and every close.
async fn outbound_pump(
    sink: &mut VisitorSink,
    mut queue: Queue,
    closing: oneshot::Receiver<Closing>,
    stop: &CancellationToken,
    origin: &OriginEnd,
) {
    let mut closing = Some(closing);
    let (code, reason) = loop {
        let next = tokio::select! {
            // First, so that a shutdown says so rather than "tunnel went away".
            biased;
            () = stop.cancelled() => break (GOING_AWAY, "gateway shutting down".to_owned()),
            next = queue.rx.recv() => next,
            asked = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => {
                match asked {
                    Ok(Closing::Reply) => {
                        let _ = sink.close().await;
                        return;
                    }
                    Ok(Closing::Close(code, reason)) => break (code, reason.to_owned()),
                    Err(_) => { closing = None; continue; }
                }
            }
        };
        match next {
            Some(Outbound::Message(message)) => {
                let cost = cost(&message);
                // A refused write most often means the visitor closed first, and then
                // `close` still flushes the reply tungstenite queued for that close.
                if sink.feed(message).await.is_err() {
                    let _ = sink.close().await;
                    return;
                }
                // Once queued in the socket's own (bounded) buffer, a message stops
                // counting.
                queue.budget.add_permits(cost as usize);
                // One flush per burst, not per message: pipelined messages share a write.
                if queue.rx.is_empty() && sink.flush().await.is_err() {
                    let _ = sink.close().await;
                    return;
                }
            }
            Some(Outbound::Close(code, reason)) => break (code, reason),
            Some(Outbound::TooBig) => {
                origin.close(TOO_BIG, "message too big").await;
                break (TOO_BIG, "message too big".to_owned());
            }
            // The tunnel released the socket or died: the visitor gets 1001.
            None => break (GOING_AWAY, "the tunnel went away".to_owned()),
        }
    };
    // `feed` is refused once the visitor closed first; `close` then still flushes the
    // reply tungstenite queued for it, which `send` would have left unsent.
    let _ = sink.feed(Message::Close(ws::to_frame(code, &reason))).await;
    let _ = sink.close().await;
}
