//! One socket write per turn of an RPC connection, however many messages the turn produced.
//!
//! capnp-futures' write queue flushes after every message. Over a socket that is one
//! `sendmsg` (and over a WebSocket one frame) per Call, Return and Release: a proxied
//! request costs several, and a burst of pipelined WebSocket messages costs one each.
//!
//! Here the write queue writes into a [`CoalescingWriter`], whose flush only buffers. The
//! [`RpcConnection`](crate::transport::RpcConnection) future writes the buffer to the
//! socket each time the `RpcSystem` it drives has been polled, so every message produced
//! in that poll goes out in one write, from the same task: no extra task, no extra wakeup.
//!
//! Two parties poll the socket: the write queue (for a large segment, or a full buffer)
//! and the flusher. A socket keeps one write waker, the last one it was given, so each
//! would erase the other's. Every socket poll therefore uses one [`SocketWaker`] that wakes
//! both: without it, a large message on a WebSocket stalled the whole connection when the
//! flusher's poll replaced the write queue's waker.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use futures::AsyncWrite;

/// Bytes the buffer may hold before a write first drains it to the socket.
const HIGH_WATER: usize = 256 * 1024;

/// Writes at least this big (the data segment of a body chunk, say) skip the buffer: what
/// is buffered goes out first, then these bytes straight from the message, saving a copy.
const DIRECT_MIN: usize = 16 * 1024;

/// A buffer that grew past this is freed once written, so an idle connection does not
/// keep it.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The waker every socket poll gets: it wakes the connection's task and the write queue,
/// whichever of the two last found the socket full.
#[derive(Default)]
struct SocketWaker {
    task: AtomicWaker,
    writer: AtomicWaker,
}

impl Wake for SocketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.task.wake();
        self.writer.wake();
    }
}

struct Inner {
    socket: Pin<Box<dyn AsyncWrite>>,
    bytes: Vec<u8>,
    /// Bytes at the front of `bytes` already handed to the socket.
    written: usize,
    /// Whether the socket holds bytes it has not been asked to flush.
    unflushed: bool,
    wakers: Arc<SocketWaker>,
    /// `wakers` as a waker, made once.
    waker: Waker,
}

impl Inner {
    /// Hands every buffered byte to the socket (without flushing it).
    fn poll_drain(&mut self) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(&self.waker);
        while self.written < self.bytes.len() {
            let n = ready!(self
                .socket
                .as_mut()
                .poll_write(&mut cx, &self.bytes[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.unflushed = true;
        }
        if self.written > 0 {
            self.written = 0;
            self.bytes.clear();
            if self.bytes.capacity() > KEEP_CAPACITY {
                self.bytes = Vec::new();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes `bytes` straight to the socket.
    fn poll_write_direct(&mut self, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut cx = Context::from_waker(&self.waker);
        let n = ready!(self.socket.as_mut().poll_write(&mut cx, bytes))?;
        self.unflushed = true;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(&self.waker);
        self.socket.as_mut().poll_flush(&mut cx)
    }
}

/// The writing half handed to the RPC system's write queue; see the module docs.
pub struct CoalescingWriter {
    inner: Rc<RefCell<Inner>>,
}

/// The other half, polled by the connection after its `RpcSystem`: writes out what the
/// [`CoalescingWriter`] gathered.
pub struct Flusher {
    inner: Rc<RefCell<Inner>>,
}

/// Splits `socket` into the buffering writer and the flusher that drains it.
pub fn coalescing<W>(socket: W) -> (CoalescingWriter, Flusher)
where
    W: AsyncWrite + 'static,
{
    let wakers = Arc::<SocketWaker>::default();
    let inner = Rc::new(RefCell::new(Inner {
        socket: Box::pin(socket),
        bytes: Vec::new(),
        written: 0,
        unflushed: false,
        waker: Waker::from(wakers.clone()),
        wakers,
    }));
    let writer = CoalescingWriter {
        inner: inner.clone(),
    };
    (writer, Flusher { inner })
}

impl AsyncWrite for CoalescingWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.inner.borrow_mut();
        let touches_socket = bytes.len() >= DIRECT_MIN || inner.bytes.len() >= HIGH_WATER;
        if touches_socket {
            inner.wakers.writer.register(cx.waker());
        }
        if bytes.len() >= DIRECT_MIN {
            ready!(inner.poll_drain())?;
            return inner.poll_write_direct(bytes);
        }
        if inner.bytes.len() >= HIGH_WATER {
            ready!(inner.poll_drain())?;
        }
        inner.bytes.extend_from_slice(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    /// Done as soon as the bytes are buffered: the [`Flusher`] writes them out at the end
    /// of this poll, together with whatever else the poll produces.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Flusher {
    /// Writes the buffer to the socket and flushes it. `Pending` means the socket is full
    /// and `cx` will be woken when it drains.
    pub fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.inner.borrow_mut();
        inner.wakers.task.register(cx.waker());
        ready!(inner.poll_drain())?;
        if inner.unflushed {
            ready!(inner.poll_flush())?;
            inner.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncWriteExt;
    use std::task::Waker;

    /// A socket that records each write it is given and can be made to refuse bytes.
    #[derive(Default)]
    struct Recorder {
        writes: Rc<RefCell<Vec<Vec<u8>>>>,
        full: Rc<RefCell<bool>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            if *self.full.borrow() {
                return Poll::Pending;
            }
            self.writes.borrow_mut().push(bytes.to_vec());
            Poll::Ready(Ok(bytes.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn messages_written_in_one_poll_leave_in_one_write() {
        let recorder = Recorder::default();
        let writes = recorder.writes.clone();
        let (mut writer, mut flusher) = coalescing(recorder);
        let mut cx = Context::from_waker(Waker::noop());
        futures::executor::block_on(async {
            for message in [&b"call"[..], b"return", b"release"] {
                writer.write_all(message).await.unwrap();
                writer.flush().await.unwrap();
            }
        });
        assert!(
            writes.borrow().is_empty(),
            "nothing reaches the socket before the flusher runs"
        );
        assert!(flusher.poll_write_out(&mut cx).is_ready());
        assert_eq!(*writes.borrow(), vec![b"callreturnrelease".to_vec()]);
    }

    #[test]
    fn a_large_segment_follows_the_buffered_bytes_uncopied() {
        let recorder = Recorder::default();
        let writes = recorder.writes.clone();
        let (mut writer, mut flusher) = coalescing(recorder);
        let mut cx = Context::from_waker(Waker::noop());
        let big = vec![9u8; DIRECT_MIN];
        futures::executor::block_on(async {
            writer.write_all(b"table").await.unwrap();
            writer.write_all(&big).await.unwrap();
            writer.write_all(b"next").await.unwrap();
        });
        assert!(flusher.poll_write_out(&mut cx).is_ready());
        assert_eq!(
            *writes.borrow(),
            vec![b"table".to_vec(), big, b"next".to_vec()]
        );
    }

    #[test]
    fn a_full_buffer_holds_the_writer_until_the_socket_takes_it() {
        let recorder = Recorder::default();
        let (writes, full) = (recorder.writes.clone(), recorder.full.clone());
        let (mut writer, mut flusher) = coalescing(recorder);
        let mut cx = Context::from_waker(Waker::noop());
        let piece = vec![7u8; DIRECT_MIN - 1];
        let mut sent = 0;
        while sent < HIGH_WATER {
            assert!(Pin::new(&mut writer).poll_write(&mut cx, &piece).is_ready());
            sent += piece.len();
        }
        *full.borrow_mut() = true;
        assert!(Pin::new(&mut writer).poll_write(&mut cx, b"x").is_pending());
        assert!(flusher.poll_write_out(&mut cx).is_pending());

        *full.borrow_mut() = false;
        assert!(matches!(
            Pin::new(&mut writer).poll_write(&mut cx, b"x"),
            Poll::Ready(Ok(1))
        ));
        assert!(flusher.poll_write_out(&mut cx).is_ready());
        let all: Vec<u8> = writes.borrow().concat();
        assert_eq!(all.len(), sent + 1);
        assert_eq!(all.last(), Some(&b'x'));
    }

    /// A socket that, like a real one, keeps only the last waker it was given, and refuses
    /// writes and flushes while full.
    #[derive(Default)]
    struct Choked {
        full: Rc<RefCell<bool>>,
        waker: Rc<RefCell<Option<Waker>>>,
    }

    impl Choked {
        fn pending<T>(&self, cx: &Context<'_>) -> Poll<T> {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl AsyncWrite for Choked {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            if *self.full.borrow() {
                return self.pending(cx);
            }
            Poll::Ready(Ok(bytes.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if *self.full.borrow() {
                return self.pending(cx);
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_blocked_large_write_is_woken_even_after_the_flusher_polled_the_socket() {
        let socket = Choked::default();
        let (full, registered) = (socket.full.clone(), socket.waker.clone());
        let (mut writer, mut flusher) = coalescing(socket);
        let (writer_wakes, task_wakes) = (Arc::<Wakes>::default(), Arc::<Wakes>::default());
        let writer_waker = Waker::from(writer_wakes.clone());
        let task_waker = Waker::from(task_wakes.clone());

        // A large segment finds the socket full; then the connection's flusher polls it
        // too (a WebSocket's flush registers a waker), which once replaced the writer's.
        assert!(Pin::new(&mut writer)
            .poll_write(&mut Context::from_waker(&writer_waker), b"x")
            .is_ready());
        flusher.inner.borrow_mut().unflushed = true;
        *full.borrow_mut() = true;
        let big = vec![1u8; DIRECT_MIN];
        assert!(Pin::new(&mut writer)
            .poll_write(&mut Context::from_waker(&writer_waker), &big)
            .is_pending());
        assert!(flusher
            .poll_write_out(&mut Context::from_waker(&task_waker))
            .is_pending());

        // The socket drains and wakes whatever it holds: both must hear of it.
        *full.borrow_mut() = false;
        registered.borrow_mut().take().expect("a waker").wake();
        let woken = |wakes: &Wakes| wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(woken(&writer_wakes), 1, "the blocked writer must be woken");
        assert_eq!(woken(&task_wakes), 1, "the connection must be woken");
        assert!(matches!(
            Pin::new(&mut writer).poll_write(&mut Context::from_waker(&writer_waker), &big),
            Poll::Ready(Ok(n)) if n == DIRECT_MIN
        ));
    }
}
