//! HTTP bodies over `ByteStream`: a capability that feeds a bounded channel, and a pump into one.

use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::capstan_capnp::byte_stream;
use crate::MAX_CHUNK;

/// Chunks buffered between a `ByteStream` server and the body that reads it.
///
/// Small on purpose: the capnp stream window already keeps bytes in flight, and each slot
/// holds up to 64 KiB.
const CHANNEL_DEPTH: usize = 4;

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The writer went away without calling `end`: the body is incomplete.
    #[error("the body broke off before its end")]
    BrokenOff,
    /// Reading the source body failed.
    #[error("reading the body failed: {0}")]
    Source(String),
    /// A `write` or `end` call on the remote `ByteStream` failed.
    #[error("the receiving side failed: {0}")]
    Sink(capnp::Error),
}

enum Piece {
    Data(Bytes),
    End,
}

/// A body fed by a [`byte_stream::Client`] made with [`channel`].
///
/// It ends cleanly only after `end` was called, and fails with [`BodyError::BrokenOff`]
/// when the writer disappears first, so a cut upload or download is never mistaken for a
/// complete one. It is `Send`, so it can go to any hyper client or service.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Piece>,
    done: bool,
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Piece::Data(data) => write!(f, "Data({} bytes)", data.len()),
            Piece::End => f.write_str("End"),
        }
    }
}

/// A new `ByteStream` capability and the body that yields what is written to it.
///
/// `write` waits while the body's reader lags, which is how backpressure reaches the
/// writer's stream window. `write` fails once the body is dropped, and for more than
/// `max_chunk` bytes (the `Limits.maxChunk` this end declared).
pub fn channel(max_chunk: usize) -> (byte_stream::Client, ChannelBody) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let client = capnp_rpc::new_client(ChannelSink {
        tx,
        broken: Cell::new(false),
        max_chunk,
    });
    (client, ChannelBody { rx, done: false })
}

struct ChannelSink {
    tx: mpsc::Sender<Piece>,
    /// Set when a `write` was cancelled before its bytes were queued. The body then has a
    /// hole, so `end` must fail rather than make a short body look complete.
    broken: Cell<bool>,
    max_chunk: usize,
}

impl ChannelSink {
    async fn push(&self, piece: Piece) -> Result<(), capnp::Error> {
        if self.broken.get() {
            return Err(capnp::Error::failed(
                "an earlier write was cancelled; the body is incomplete".into(),
            ));
        }
        // A caller may cancel a waiting `write` (libcapnp 0.x does when it drops the
        // stream early); the guard marks the stream broken if that happens mid-send.
        let guard = BreakOnDrop(&self.broken);
        let sent = self.tx.send(piece).await;
        std::mem::forget(guard);
        sent.map_err(|_| capnp::Error::failed("the body's reader went away".into()))
    }
}

/// Marks a stream broken when dropped; forgotten once the bytes are queued.
struct BreakOnDrop<'a>(&'a Cell<bool>);

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

impl byte_stream::Server for ChannelSink {
    async fn write(
        self: std::rc::Rc<Self>,
        params: byte_stream::WriteParams,
    ) -> Result<(), capnp::Error> {
        let data = params.get()?.get_data()?;
        if data.len() > self.max_chunk {
            // Refused, and the body with it: a hole must not pass for a complete body.
            self.broken.set(true);
            return Err(over_limit("ByteStream.write", data.len(), self.max_chunk));
        }
        let data = Bytes::copy_from_slice(data);
        self.push(Piece::Data(data)).await
    }

    async fn end(
        self: std::rc::Rc<Self>,
        _: byte_stream::EndParams,
        _: byte_stream::EndResults,
    ) -> Result<(), capnp::Error> {
        self.push(Piece::End).await
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Data(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Piece::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(BodyError::BrokenOff)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The error for `what` of `len` bytes, over the `limit` the receiver declared.
pub fn over_limit(what: &str, len: usize, limit: usize) -> capnp::Error {
    capnp::Error::failed(format!(
        "{what} of {len} bytes is over the limit of {limit} bytes (Limits.maxChunk)"
    ))
}

/// Writes all of `body` into `sink` in chunks of at most `chunk` bytes (the agreed
/// `Limits.maxChunk`, at most [`MAX_CHUNK`]), then calls `end`.
///
/// Each `write` is awaited, so a slow receiver slows the reading of `body`.
pub async fn pump<B>(mut body: B, sink: &byte_stream::Client, chunk: usize) -> Result<(), BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| BodyError::Source(err.to_string()))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // Trailers: HTTP/1.1 peers rarely send them and we do not carry them.
        };
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(chunk.clamp(1, MAX_CHUNK)));
            let mut request = sink.write_request();
            request.get().set_data(&piece);
            request.send().await.map_err(BodyError::Sink)?;
        }
    }
    sink.end_request()
        .send()
        .promise
        .await
        .map_err(BodyError::Sink)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write(sink: &byte_stream::Client, data: &[u8]) -> Result<(), capnp::Error> {
        let mut request = sink.write_request();
        request.get().set_data(data);
        request.send().await
    }

    async fn end(sink: &byte_stream::Client) -> Result<(), capnp::Error> {
        sink.end_request().send().promise.await.map(drop)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_over_the_limit_is_refused_and_breaks_the_body() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (sink, mut body) = channel(1000);
                write(&sink, &[1; 1000]).await.unwrap();
                let refused = write(&sink, &[2; 1001]).await.unwrap_err();
                assert!(refused.extra.contains("1001 bytes"), "{refused}");
                assert!(end(&sink).await.is_err(), "the body has a hole");
                drop(sink);
                let first = body.frame().await.unwrap().unwrap();
                assert_eq!(first.into_data().unwrap().len(), 1000);
                assert!(matches!(
                    body.frame().await,
                    Some(Err(BodyError::BrokenOff))
                ));
            })
            .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_write_makes_the_body_incomplete_not_short() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (sink, mut body) = channel(MAX_CHUNK);
                let reader = tokio::task::spawn_local(async move {
                    let mut kept = 0;
                    loop {
                        match body.frame().await {
                            Some(Ok(_)) => kept += 1,
                            Some(Err(err)) => break (kept, Err(err)),
                            None => break (kept, Ok(())),
                        }
                    }
                });
                for _ in 0..CHANNEL_DEPTH {
                    write(&sink, b"kept").await.unwrap();
                }
                // Whether or not the reader has drained the channel yet, this write is
                // cancelled after its first poll: its bytes may never be queued.
                let mut waiting = Box::pin(write(&sink, b"lost"));
                let first = futures::poll!(&mut waiting);
                drop(waiting);
                let ended = end(&sink).await;
                drop(sink);
                let (kept, outcome) = reader.await.unwrap();
                if first.is_pending() {
                    assert!(ended.is_err(), "end after a lost write must fail");
                    assert_eq!(kept, CHANNEL_DEPTH);
                    assert!(matches!(outcome, Err(BodyError::BrokenOff)), "{outcome:?}");
                } else {
                    // The write went through at once: nothing was lost.
                    assert!(ended.is_ok());
                    assert_eq!((kept, outcome.is_ok()), (CHANNEL_DEPTH + 1, true));
                }
            })
            .await;
    }
}
