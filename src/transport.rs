//! An `RpcSystem` over a byte stream: plain TCP, or the binary messages of a WebSocket.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use bytes::Bytes;
use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use futures::task::AtomicWaker;
use futures::{AsyncRead, AsyncWrite, Sink, Stream};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::coalesce::{self, Flusher};
use crate::{MAX_RPC_MESSAGE, STREAM_WINDOW};

/// Reader limits for every capstan connection, the same on both ends.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(MAX_RPC_MESSAGE / 8));
    options
}

/// Builds a two-party RPC connection over `io`, offering `bootstrap` to the peer.
///
/// `io` is any futures-io stream; wrap tokio types with `tokio_util::compat`. Spawn the
/// returned future on a `LocalSet`: it is `!Send` and runs the connection until it ends.
pub fn rpc_system<T>(
    io: T,
    side: Side,
    bootstrap: Option<capnp::capability::Client>,
) -> RpcConnection
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (reader, writer) = futures::AsyncReadExt::split(io);
    let (writer, flusher) = coalesce::coalescing(writer);
    let mut network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        writer,
        side,
        reader_options(),
    );
    network.set_window_size(STREAM_WINDOW);
    let turn = Arc::<Turn>::default();
    RpcConnection {
        system: RpcSystem::new(Box::new(network), bootstrap),
        flusher,
        waker: Waker::from(turn.clone()),
        turn,
    }
}

/// A running two-party connection: the `RpcSystem`, and the socket writes it produces,
/// one per poll (see [`coalesce`]). Resolves when the connection ends.
pub struct RpcConnection {
    system: RpcSystem<Side>,
    flusher: Flusher,
    turn: Arc<Turn>,
    /// `turn` as a waker, made once rather than on every poll.
    waker: Waker,
}

impl RpcConnection {
    /// The peer's bootstrap capability.
    pub fn bootstrap<T: capnp::capability::FromClientHook>(&mut self, side: Side) -> T {
        self.system.bootstrap(side)
    }

    /// A handle that ends the connection; see [`disconnect_now`].
    pub fn get_disconnector(&self) -> capnp_rpc::Disconnector<Side> {
        self.system.get_disconnector()
    }
}

impl Future for RpcConnection {
    type Output = Result<(), capnp::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.turn.task.register(cx.waker());
        let mut inner = Context::from_waker(&this.waker);
        // capnp-rpc handles each incoming message in a task of its own, and its task set
        // returns after a few polls even when more are ready, waking itself. Polling again
        // at once lets a whole batch of calls run (and their handlers queue their writes)
        // before this connection writes and before other tasks, such as the pumps that
        // flush WebSockets, run.
        let mut budget = BATCH_POLLS;
        let ended = loop {
            this.turn.woken.store(false, Ordering::Relaxed);
            match Pin::new(&mut this.system).poll(&mut inner) {
                Poll::Pending if this.turn.woken.load(Ordering::Relaxed) && budget > 0 => {
                    budget -= 1;
                }
                other => break other,
            }
        };
        // Written even when the system has just ended, so that its last messages (an
        // `Abort`, say) go out; one try only, since nothing waits on a peer that stopped
        // reading.
        match (ended, this.flusher.poll_write_out(cx)) {
            (Poll::Ready(result), _) => Poll::Ready(result),
            // A socket that fails a write is dead: end the connection, as a failed read does.
            (Poll::Pending, Poll::Ready(Err(err))) => Poll::Ready(Err(capnp::Error::disconnected(
                format!("writing to the peer failed: {err}"),
            ))),
            (Poll::Pending, _) => Poll::Pending,
        }
    }
}

/// How many times one poll of a connection may poll its `RpcSystem` again because it
/// woke itself: enough for a batch of calls, few enough not to starve other tasks.
const BATCH_POLLS: usize = 32;

/// The waker the `RpcSystem` gets: it notes that it was woken, and wakes the task.
#[derive(Default)]
struct Turn {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Relaxed);
        self.task.wake();
    }
}

/// Ends a connection at once, whatever the peer does: every pending call fails with
/// `Disconnected` and every capability exported on it is released.
///
/// Dropping the `RpcSystem` future alone is not enough: calls waiting on a silent peer
/// would wait forever. The disconnector's first poll does the work synchronously; the
/// rest of it (flushing to the peer) is skipped, since the peer may be gone.
pub fn disconnect_now(mut disconnector: capnp_rpc::Disconnector<Side>) {
    let _ = futures::FutureExt::now_or_never(&mut disconnector);
}

/// tungstenite settings for the tunnel's own WebSocket (`/_capstan/connect`), the same on
/// both ends: room for the largest RPC message in one WebSocket message, though the Rust
/// ends write at most [`WS_WRITE_MAX`] per message.
pub fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let max = Some(MAX_RPC_MESSAGE + 1024);
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(max)
        .max_frame_size(max)
}

/// A WebSocket seen as a byte stream: each write becomes one binary message, and reads
/// yield the payloads of binary messages back to back.
///
/// This lets the Cap'n Proto stream ride on an ordinary HTTP port through proxies and load
/// balancers. Ping and pong are answered by tungstenite underneath; a text message is a
/// protocol violation.
pub struct WebSocketIo<S> {
    socket: S,
    pending: Bytes,
}

impl<S> WebSocketIo<S> {
    /// Wraps an open WebSocket.
    pub fn new(socket: S) -> Self {
        Self {
            socket,
            pending: Bytes::new(),
        }
    }
}

/// The largest binary message [`WebSocketIo`] sends, well under every peer's limit.
const WS_WRITE_MAX: usize = 1 << 20;

fn to_io(err: tungstenite::Error) -> io::Error {
    match err {
        tungstenite::Error::Io(err) => err,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::BrokenPipe.into()
        }
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for WebSocketIo<S>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        while self.pending.is_empty() {
            match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a capstan connection; only binary is allowed",
                    )))
                }
                Some(Err(err)) => return Poll::Ready(Err(to_io(err))),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Poll::Ready(Ok(n))
    }
}

impl<S> AsyncWrite for WebSocketIo<S>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.socket).poll_ready(cx)).map_err(to_io)?;
        // The coalescing buffer can hand over more than the peer's message limit in one
        // write; a WebSocket message carries at most this much of it.
        let n = buf.len().min(WS_WRITE_MAX);
        Pin::new(&mut self.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx).map_err(to_io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_close(cx).map_err(to_io)
    }
}
