//! The capabilities a `fetch` call carries: `Responder` and `BodySource`.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use capstan::body::{channel, pump, ChannelBody};
use capstan::capstan_capnp::{body_source, responder};
use http::{HeaderMap, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;

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
        let head = head.and_then(|(status, headers)| {
            check_final_status(status)?;
            let body = params.get()?.get_response()?.get_body()?;
            if !body.is_empty() {
                // Dropping it silently would hide a tunnel bug: say so.
                return Err(capnp::Error::failed(format!(
                    "Responder.start carried a body of {} bytes; a streamed body goes \
                     through the ByteStream it returns",
                    body.len()
                )));
            }
            Ok((status, headers))
        });
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
    body: RefCell<Option<Upload>>,
    /// The largest write the tunnel accepts.
    chunk: usize,
}

impl BodySourceImpl {
    pub(crate) fn client(body: Upload, chunk: usize) -> body_source::Client {
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

/// Refuses an informational (1xx) status as the final answer to a `fetch`.
pub(crate) fn check_final_status(status: StatusCode) -> Result<(), capnp::Error> {
    if status.is_informational() {
        return Err(capnp::Error::failed(format!(
            "status {} is informational, not an answer",
            status.as_u16()
        )));
    }
    Ok(())
}

/// A visitor's streamed upload, which fails past the gateway's request body limit and
/// notes that it did, so that the visitor gets 413 rather than the tunnel's failure.
pub(crate) struct Upload {
    body: Incoming,
    /// Bytes still allowed.
    left: u64,
    over: Rc<std::cell::Cell<bool>>,
}

impl Upload {
    /// `body`, allowed `max` bytes; `over` is set if it brings more.
    pub(crate) fn new(body: Incoming, max: u64, over: Rc<std::cell::Cell<bool>>) -> Self {
        Self {
            body,
            left: max,
            over,
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        let Some(Ok(frame)) = frame else {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        };
        let len = frame.data_ref().map_or(0, |data| data.len() as u64);
        if len > self.left {
            self.over.set(true);
            return std::task::Poll::Ready(Some(Err("the request body is over the limit".into())));
        }
        self.left -= len;
        std::task::Poll::Ready(Some(Ok(frame)))
    }
}
