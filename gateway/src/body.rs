//! The capabilities a `fetch` call carries, `Responder` and `BodySource`, and the response
//! body that streams from the tunnel to the visitor.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use capnp::capability::{Promise, Response};
use capstan::body::{channel, pump, ChannelBody};
use capstan::capstan_capnp::{body_source, fetcher, responder};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// The body type of every response the gateway sends.
///
/// Not `Send`: a streamed body holds the capnp call, which lives on this thread.
pub(crate) type GatewayBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A whole body already in memory.
pub(crate) fn full(bytes: Bytes) -> GatewayBody {
    Box::pin(http_body_util::Full::new(bytes).map_err(|never| match never {}))
}

/// The head of a streamed response, and the body that follows it.
pub(crate) struct StreamedHead {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: ChannelBody,
}

/// Receives `Responder.start` and hands the head to the waiting request.
pub(crate) struct ResponderImpl {
    head: RefCell<Option<oneshot::Sender<Result<StreamedHead, capnp::Error>>>>,
}

impl ResponderImpl {
    pub(crate) fn client() -> (
        responder::Client,
        oneshot::Receiver<Result<StreamedHead, capnp::Error>>,
    ) {
        let (tx, rx) = oneshot::channel();
        let client = capnp_rpc::new_client(Self {
            head: RefCell::new(Some(tx)),
        });
        (client, rx)
    }
}

impl responder::Server for ResponderImpl {
    async fn start(
        self: Rc<Self>,
        params: responder::StartParams,
        mut results: responder::StartResults,
    ) -> Result<(), capnp::Error> {
        let Some(head_tx) = self.head.borrow_mut().take() else {
            return Err(capnp::Error::failed("Responder.start called twice".into()));
        };
        let head = params
            .get()
            .and_then(|p| p.get_response())
            .and_then(capstan::headers::read_head);
        let (status, headers) = match head {
            Ok(head) => head,
            Err(err) => {
                let _ = head_tx.send(Err(err.clone())); // The visitor may be gone already.
                return Err(err);
            }
        };
        let (sink, body) = channel(capstan::MAX_CHUNK);
        head_tx
            .send(Ok(StreamedHead {
                status,
                headers,
                body,
            }))
            .map_err(|_| capnp::Error::failed("the visitor went away".into()))?;
        results.get().set_body(sink);
        Ok(())
    }
}

/// A visitor's request body that the tunnel pulls with `pipeTo`.
pub(crate) struct BodySourceImpl {
    body: RefCell<Option<Incoming>>,
    /// The largest write the tunnel accepts.
    chunk: usize,
}

impl BodySourceImpl {
    pub(crate) fn client(body: Incoming, chunk: usize) -> body_source::Client {
        capnp_rpc::new_client(Self {
            body: RefCell::new(Some(body)),
            chunk,
        })
    }
}

impl body_source::Server for BodySourceImpl {
    async fn pipe_to(
        self: Rc<Self>,
        params: body_source::PipeToParams,
        _: body_source::PipeToResults,
    ) -> Result<(), capnp::Error> {
        let sink = params.get()?.get_sink()?;
        let Some(body) = self.body.borrow_mut().take() else {
            return Err(capnp::Error::failed(
                "BodySource.pipeTo called twice".into(),
            ));
        };
        pump(body, &sink, self.chunk)
            .await
            .map_err(|err| capnp::Error::failed(format!("visitor upload: {err}")))
    }
}

/// The visitor's view of a streamed response: the tunnel's `ByteStream` writes, cut off if
/// the `fetch` call fails first. Dropping it cancels the call, which stops the origin.
pub(crate) struct TunnelBody {
    body: ChannelBody,
    call: Option<Promise<Response<fetcher::fetch_results::Owned>, capnp::Error>>,
    _permit: OwnedSemaphorePermit,
}

impl TunnelBody {
    /// The body of a streamed response; `call` is None when it has already returned.
    pub(crate) fn new(
        body: ChannelBody,
        call: Option<Promise<Response<fetcher::fetch_results::Owned>, capnp::Error>>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            body,
            call,
            _permit: permit,
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
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        // Nothing to read yet. A tunnel calls `end` (and `end` is queued here) before its
        // `fetch` returns, so a call that is over means the body will never end: cut the
        // visitor off rather than leave it waiting.
        let outcome = match self.call.as_mut() {
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
        self.body.is_end_stream()
    }
}
