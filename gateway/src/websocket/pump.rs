//! One visitor WebSocket once upgraded: the pump each way, and the close handshake.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use capstan::capstan_capnp::web_socket_handle;
use capstan::gauge::GaugeGuard;
use capstan::websocket::{self as ws, GOING_AWAY, TOO_BIG};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{cost, Outbound, Queue};
use crate::limit::IpSlot;

/// After one direction closed, how long the other may take to finish its close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the inbound pump asks of the outbound one, which owns the visitor's sink.
enum Closing {
    /// Finish the close handshake the visitor started.
    Reply,
    /// Close the visitor's socket with this code and reason.
    Close(u16, &'static str),
}

/// A visitor's upgraded socket and the origin's end: [`run`](Pump::run) pumps both ways
/// until either side closes.
pub(super) struct Pump {
    pub(super) local: web_socket_handle::Client,
    pub(super) outbound: Queue,
    pub(super) max_message: usize,
    /// The visitor's connection still counts against its address.
    pub(super) _slot: Rc<IpSlot>,
    pub(super) stop: CancellationToken,
    pub(super) _live: GaugeGuard,
}

impl Pump {
    pub(super) async fn run(self, on_upgrade: OnUpgrade) {
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
                        ws::finish(sink).await;
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
                // A refused write most often means the visitor closed first; `finish`
                // still flushes the reply tungstenite queued for that close.
                if sink.feed(message).await.is_err() {
                    ws::finish(sink).await;
                    return;
                }
                // Once queued in the socket's own (bounded) buffer, a message stops
                // counting.
                queue.budget.add_permits(cost as usize);
                // One flush per burst, not per message: pipelined messages share a write.
                if queue.rx.is_empty() && sink.flush().await.is_err() {
                    ws::finish(sink).await;
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
    // `feed` is refused once the visitor closed first; `finish` then still flushes the
    // reply tungstenite queued for it, which `send` would have left unsent.
    let _ = sink.feed(Message::Close(ws::to_frame(code, &reason))).await;
    ws::finish(sink).await;
}
