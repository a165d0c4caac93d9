//! The body of a streamed response: the tunnel's `ByteStream` writes on their way to the visitor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use capnp::capability::{Promise, Response};
use capstan::body::ChannelBody;
use capstan::capstan_capnp::fetcher;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::body::BoxError;

type FetchPromise = Promise<Response<fetcher::fetch_results::Owned>, capnp::Error>;

/// After the visitor got a whole body, how long the tunnel may take to end it and return.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// The visitor's view of a streamed response: the tunnel's `ByteStream` writes, cut off if
/// the `fetch` call fails first or the tunnel sends more than its `Content-Length`.
///
/// Dropped early (the visitor left), it cancels the call, which stops the origin. Dropped
/// after the visitor got the whole body, it lets the call finish instead, so that the
/// tunnel sees success rather than a cancellation it cannot tell from a visitor leaving.
pub(crate) struct TunnelBody {
    body: Option<ChannelBody>,
    call: Option<FetchPromise>,
    /// The response's `Content-Length`, if it has one.
    length: Option<u64>,
    /// Bytes handed to the visitor so far.
    sent: u64,
    /// The tunnel called `end`.
    ended: bool,
    /// Owns the calls left to finish after the visitor was served.
    finishing: TaskTracker,
    permit: Option<OwnedSemaphorePermit>,
}

impl TunnelBody {
    /// The body of a streamed response; `call` is None when it has already returned.
    pub(crate) fn new(
        body: ChannelBody,
        call: Option<FetchPromise>,
        length: Option<u64>,
        finishing: TaskTracker,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            body: Some(body),
            call,
            length,
            sent: 0,
            ended: false,
            finishing,
            permit: Some(permit),
        }
    }

    /// Counts a chunk on its way to the visitor; more than `Content-Length` is an error.
    fn count(&mut self, data: &Bytes) -> Result<(), BoxError> {
        self.sent += data.len() as u64;
        match self.length {
            Some(length) if self.sent > length => {
                warn!(length, sent = self.sent, "protocol error: the tunnel sent more than its Content-Length; cutting the response");
                Err("the tunnel sent more than its Content-Length".into())
            }
            _ => Ok(()),
        }
    }
}

impl Body for TunnelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(err) = this.count(data) {
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Pending => {}
        }
        // Nothing to read yet. A tunnel calls `end` (and `end` is queued here) before its
        // `fetch` returns, so a call that is over means the body will never end: cut the
        // visitor off rather than leave it waiting.
        let outcome = match this.call.as_mut() {
            None => Some(Ok(())),
            Some(call) => match Pin::new(call).poll(cx) {
                Poll::Ready(result) => Some(result.map(drop)),
                Poll::Pending => None,
            },
        };
        match outcome {
            None => Poll::Pending,
            Some(Err(err)) => Poll::Ready(Some(Err(err.to_string().into()))),
            Some(Ok(())) => Poll::Ready(Some(Err(
                "the tunnel finished the response without ending its body".into(),
            ))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|body| body.is_end_stream())
    }
}

impl Drop for TunnelBody {
    fn drop(&mut self) {
        let served = self.ended || self.length == Some(self.sent);
        let (Some(call), true) = (self.call.take(), served) else {
            return; // Early: dropping the call cancels it, which stops the origin.
        };
        let (mut body, permit) = (self.body.take(), self.permit.take());
        self.finishing.spawn_local(async move {
            let finish = async {
                // Accept `end`, and see whether anything past the body still comes.
                if let Some(body) = body.as_mut() {
                    while let Some(Ok(frame)) = body.frame().await {
                        if frame.data_ref().is_some_and(|data| !data.is_empty()) {
                            warn!("protocol error: the tunnel sent more than its Content-Length");
                            return;
                        }
                    }
                }
                let _ = call.await;
            };
            let _ = tokio::time::timeout(FINISH_GRACE, finish).await;
            drop(permit);
        });
    }
}
