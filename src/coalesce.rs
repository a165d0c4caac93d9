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

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use futures::AsyncWrite;

/// Bytes the buffer may hold before a write first drains it to the socket.
const HIGH_WATER: usize = 256 * 1024;

/// Writes at least this big (the data segment of a body chunk, say) skip the buffer: what
/// is buffered goes out first, then these bytes straight from the message, saving a copy.
const DIRECT_MIN: usize = 16 * 1024;

/// A buffer that grew past this is freed once written, so an idle connection does not
/// keep it.
const KEEP_CAPACITY: usize = 64 * 1024;

struct Inner {
    socket: Pin<Box<dyn AsyncWrite>>,
    bytes: Vec<u8>,
    /// Bytes at the front of `bytes` already handed to the socket.
    written: usize,
    /// Whether the socket holds bytes it has not been asked to flush.
    unflushed: bool,
}

impl Inner {
    /// Hands every buffered byte to the socket (without flushing it).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.bytes.len() {
            let n = ready!(self
                .socket
                .as_mut()
                .poll_write(cx, &self.bytes[self.written..]))?;
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
    let inner = Rc::new(RefCell::new(Inner {
        socket: Box::pin(socket),
        bytes: Vec::new(),
        written: 0,
        unflushed: false,
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
        if bytes.len() >= DIRECT_MIN {
            ready!(inner.poll_drain(cx))?;
            let n = ready!(inner.socket.as_mut().poll_write(cx, bytes))?;
            inner.unflushed = true;
            return Poll::Ready(Ok(n));
        }
        if inner.bytes.len() >= HIGH_WATER {
            ready!(inner.poll_drain(cx))?;
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
        ready!(inner.poll_drain(cx))?;
        if inner.unflushed {
            ready!(inner.socket.as_mut().poll_flush(cx))?;
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
}
