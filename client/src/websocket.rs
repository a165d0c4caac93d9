//! One tunneled WebSocket at the origin's end: the local socket as a capability, and a pump
//! from the origin to the visitor.

use std::rc::Rc;

use capstan::capstan_capnp::web_socket_handle;
use capstan::gauge::GaugeGuard;
use capstan::websocket::{self as ws, GOING_AWAY, TOO_BIG};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, Mutex};
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
    counters: &Counters,
) -> web_socket_handle::Client {
    let (sink, stream) = socket.split();
    let sink: Sink = Rc::new(Mutex::new(sink));
    let (released_tx, released_rx) = oneshot::channel();
    let live = counters.websockets.guard();
    // The pump ends when either socket closes or the gateway releases our handle, so the
    // socket itself owns it.
    tokio::task::spawn_local(pump(stream, sink.clone(), public, released_rx, live));
    capnp_rpc::new_client(LocalSocket {
        sink,
        _released: released_tx,
        _live: counters.socket_handles.guard(),
    })
}

/// The origin's socket as the gateway sees it.
struct LocalSocket {
    sink: Sink,
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
        // Awaited: a slow origin holds back the gateway's stream window.
        self.sink
            .lock()
            .await
            .send(message)
            .await
            .map_err(|err| capnp::Error::failed(format!("the origin's socket failed: {err}")))
    }

    async fn close(
        self: Rc<Self>,
        params: web_socket_handle::CloseParams,
        _: web_socket_handle::CloseResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let frame = ws::to_frame(params.get_code(), params.get_reason()?.to_str()?);
        // Closing a socket that is already closed is fine.
        let _ = self.sink.lock().await.send(Message::Close(frame)).await;
        Ok(())
    }
}

async fn pump(
    mut stream: SplitStream<OriginSocket>,
    sink: Sink,
    public: web_socket_handle::Client,
    mut released: oneshot::Receiver<()>,
    _live: GaugeGuard,
) {
    let (code, reason) = loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = &mut released => {
                // The gateway dropped the socket without closing it (it died or lost
                // the visitor): close the origin cleanly.
                let frame = ws::to_frame(GOING_AWAY, "the visitor went away");
                let _ = sink.lock().await.send(Message::Close(frame)).await;
                return;
            }
        };
        match next {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws::send(&public, &message).await.is_err() {
                    let frame = ws::to_frame(GOING_AWAY, "the tunnel went away");
                    let _ = sink.lock().await.send(Message::Close(frame)).await;
                    return;
                }
            }
            // Ping and pong are per hop; tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => break ws::from_frame(frame.as_ref()),
            Some(Err(WsError::Capacity(err))) => {
                debug!(%err, "origin message over the cap");
                let frame = ws::to_frame(TOO_BIG, "message too big");
                let _ = sink.lock().await.send(Message::Close(frame)).await;
                break (TOO_BIG, "message too big".to_owned());
            }
            Some(Err(_)) | None => break (GOING_AWAY, "origin connection lost".to_owned()),
        }
    };
    let _ = ws::close(&public, code, &reason).await;
}
