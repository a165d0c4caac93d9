//! One tunneled WebSocket at the origin's end: the local socket as a capability, and a pump
//! from the origin to the visitor.

use std::rc::Rc;

use capstan::capstan_capnp::web_socket_handle;
use capstan::gauge::GaugeGuard;
use capstan::websocket::{self as ws, GOING_AWAY, TOO_BIG};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, Mutex, Notify};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::debug;

use crate::origin::OriginSocket;
use crate::Counters;

type Sink = Rc<Mutex<SplitSink<OriginSocket, Message>>>;

/// Splits `socket`, starts the pump toward `public`, and returns the capability for the
/// gateway to send into.
pub(crate) fn open(
    socket: OriginSocket,
    public: web_socket_handle::Client,
    max_message: usize,
    counters: &Counters,
) -> web_socket_handle::Client {
    let (sink, stream) = socket.split();
    let sink: Sink = Rc::new(Mutex::new(sink));
    let (released_tx, released_rx) = oneshot::channel();
    let unflushed = Rc::new(Notify::new());
    let live = counters.websockets.guard();
    // The pump ends when either socket closes or the gateway releases our handle, so the
    // socket itself owns it.
    tokio::task::spawn_local(pump(
        stream,
        sink.clone(),
        unflushed.clone(),
        public.clone(),
        released_rx,
        live,
    ));
    capnp_rpc::new_client(LocalSocket {
        sink,
        unflushed,
        public,
        max_message,
        _released: released_tx,
        _live: counters.socket_handles.guard(),
    })
}

/// The origin's socket as the gateway sees it.
struct LocalSocket {
    sink: Sink,
    /// Wakes the pump to flush what `send` calls queued.
    unflushed: Rc<Notify>,
    /// The visitor's end, told when a message over the cap closes the socket.
    public: web_socket_handle::Client,
    /// The largest message both ends accept.
    max_message: usize,
    /// Dropped with the capability: tells the pump the gateway let go.
    _released: oneshot::Sender<()>,
    _live: GaugeGuard,
}

impl web_socket_handle::Server for LocalSocket {
    async fn send(
        self: Rc<Self>,
        params: web_socket_handle::SendParams,
    ) -> Result<(), capnp::Error> {
        let message = ws::read_message(params.get()?.get_message()?)?;
        if message.len() > self.max_message {
            // A gateway that ignored the agreed limit: 1009 on both sides, and this `send`
            // fails, since the message is not delivered.
            close_origin(&self.sink, TOO_BIG, "message too big").await;
            let _ = ws::close(&self.public, TOO_BIG, "message too big").await;
            return Err(ws::too_big(message.len(), self.max_message));
        }
        // Queued, not flushed: the pump flushes once the calls that arrived together have
        // all queued theirs, so pipelined messages share a write. Queueing waits while
        // the socket is full, and that holds back the gateway's stream window.
        self.sink
            .lock()
            .await
            .feed(message)
            .await
            .map_err(|err| capnp::Error::failed(format!("the origin's socket failed: {err}")))?;
        self.unflushed.notify_one();
        Ok(())
    }

    async fn close(
        self: Rc<Self>,
        params: web_socket_handle::CloseParams,
        _: web_socket_handle::CloseResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        close_origin(
            &self.sink,
            params.get_code(),
            params.get_reason()?.to_str()?,
        )
        .await;
        Ok(())
    }
}

async fn pump(
    mut stream: SplitStream<OriginSocket>,
    sink: Sink,
    unflushed: Rc<Notify>,
    public: web_socket_handle::Client,
    mut released: oneshot::Receiver<()>,
    _live: GaugeGuard,
) {
    // Flushes what `send` calls queued. It runs beside the forwarding loop, which can wait
    // on a slow visitor, so that the visitor's own messages reach the origin meanwhile.
    let flushing = async {
        loop {
            unflushed.notified().await;
            if sink.lock().await.flush().await.is_err() {
                return;
            }
        }
    };
    // Origin to visitor. `None`: the origin's socket is already closed.
    let forwarding = async {
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = &mut released => {
                    // The gateway dropped the socket without closing it (it died or lost
                    // the visitor): close the origin cleanly.
                    close_origin(&sink, GOING_AWAY, "the visitor went away").await;
                    return None;
                }
            };
            match next {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws::send(&public, &message).await.is_err() {
                        close_origin(&sink, GOING_AWAY, "the tunnel went away").await;
                        return None;
                    }
                }
                // Ping and pong are per hop; tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => return Some(ws::from_frame(frame.as_ref())),
                Some(Err(WsError::Capacity(err))) => {
                    debug!(%err, "origin message over the cap");
                    close_origin(&sink, TOO_BIG, "message too big").await;
                    return Some((TOO_BIG, "message too big".to_owned()));
                }
                Some(Err(_)) | None => {
                    return Some((GOING_AWAY, "origin connection lost".to_owned()))
                }
            }
        }
    };
    let ended = tokio::select! {
        ended = forwarding => ended,
        () = flushing => Some((GOING_AWAY, "origin connection lost".to_owned())),
    };
    if let Some((code, reason)) = ended {
        let _ = ws::close(&public, code, &reason).await;
    }
}

/// Sends the origin a close frame for `code` and `reason`, after every frame queued before
/// it. Closing a socket that is already closed is fine.
async fn close_origin(sink: &Sink, code: u16, reason: &str) {
    let frame = ws::to_frame(code, reason);
    let mut sink = sink.lock().await;
    // `feed` is refused once the origin closed first; `finish` then still flushes the
    // reply tungstenite queued for it, which `send` would have left unsent.
    let _ = sink.feed(Message::Close(frame)).await;
    ws::finish(&mut *sink).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    /// The visitor's end as a gateway that ignores limits would hold it: records closes.
    struct Public(tokio::sync::mpsc::Sender<u16>);

    impl web_socket_handle::Server for Public {
        async fn close(
            self: Rc<Self>,
            params: web_socket_handle::CloseParams,
            _: web_socket_handle::CloseResults,
        ) -> Result<(), capnp::Error> {
            let _ = self.0.send(params.get()?.get_code()).await;
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_message_over_the_cap_from_the_gateway_is_refused_with_1009_both_ways() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                let io: Box<dyn crate::origin::OriginIo> = Box::new(ours);
                let socket = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
                let mut origin = WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
                let (closes, mut closed) = tokio::sync::mpsc::channel(4);
                let public: web_socket_handle::Client = capnp_rpc::new_client(Public(closes));
                let handle = open(socket, public, 100, &Counters::default());

                let at_cap = Message::binary(vec![1u8; 100]);
                ws::send(&handle, &at_cap).await.unwrap();
                assert_eq!(origin.next().await.unwrap().unwrap(), at_cap);

                let over = ws::send(&handle, &Message::binary(vec![2u8; 101])).await;
                assert!(over.unwrap_err().extra.contains("message too big"));
                assert_eq!(closed.recv().await, Some(TOO_BIG), "the gateway is told");
                match origin.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        assert_eq!(u16::from(frame.code), TOO_BIG)
                    }
                    other => panic!("the origin must get 1009, got {other:?}"),
                }
            })
            .await;
    }
}
