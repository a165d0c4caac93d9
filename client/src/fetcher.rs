//! The tunnel's `Fetcher`: each `fetch` call becomes one request to the origin.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use capstan::body::{channel, over_limit, pump};
use capstan::capstan_capnp::{fetcher, responder, response};
use capstan::limits::Limits;
use capstan::MAX_CHUNK;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tracing::info;

use crate::origin::{Handshake, Origin, OriginBody, RequestBody};
use crate::{websocket, Counters};

/// Counts the `fetch` calls in progress, so a shutdown can wait for them.
#[derive(Default)]
pub(crate) struct Active {
    count: Cell<usize>,
    idle: Notify,
}

impl Active {
    fn enter(self: &Rc<Self>) -> ActiveGuard {
        self.count.set(self.count.get() + 1);
        ActiveGuard(self.clone())
    }

    /// Resolves once no call is in progress.
    pub(crate) async fn idle(&self) {
        while self.count.get() > 0 {
            self.idle.notified().await;
        }
    }
}

struct ActiveGuard(Rc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let count = self.0.count.get() - 1;
        self.0.count.set(count);
        if count == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

pub(crate) struct FetcherImpl<O> {
    origin: O,
    active: Rc<Active>,
    counters: Counters,
    /// What both ends accept: messages to the gateway stay within it.
    agreed: Rc<Cell<Limits>>,
}

impl<O: Origin> FetcherImpl<O> {
    pub(crate) fn new(
        origin: O,
        active: Rc<Active>,
        counters: Counters,
        agreed: Rc<Cell<Limits>>,
    ) -> Self {
        Self {
            origin,
            active,
            counters,
            agreed,
        }
    }
}

fn failed(message: impl std::fmt::Display) -> capnp::Error {
    capnp::Error::failed(message.to_string())
}

impl<O: Origin> fetcher::Server for FetcherImpl<O> {
    async fn fetch(
        self: Rc<Self>,
        params: fetcher::FetchParams,
        mut results: fetcher::FetchResults,
    ) -> Result<(), capnp::Error> {
        let _active = self.active.enter();
        let started = Instant::now();
        let params = params.get()?;
        let wire = params.get_request()?;
        let method = Method::from_bytes(wire.get_method()?.as_bytes()).map_err(failed)?;
        let uri =
            Uri::from_maybe_shared(Bytes::copy_from_slice(wire.get_path()?)).map_err(failed)?;
        let headers = capstan::headers::read(wire.get_headers()?)?;
        let responder = params.get_responder()?;
        // Held until the call ends: dropping it cancels the gateway's upload.
        let (body, upload) = if params.has_body() {
            let (sink, body) = channel(MAX_CHUNK);
            let mut pipe = params.get_body()?.pipe_to_request();
            pipe.get().set_sink(sink);
            (RequestBody::stream(body), Some(pipe.send().promise))
        } else {
            let inline = wire.get_body()?;
            if inline.len() > MAX_CHUNK {
                return Err(over_limit(
                    "an inline request body",
                    inline.len(),
                    MAX_CHUNK,
                ));
            }
            (RequestBody::full(Bytes::copy_from_slice(inline)), None)
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let line = format!("{} {}", request.method(), request.uri());

        let serve = self.origin.serve(request);
        tokio::pin!(serve);
        // The upload's outcome does not decide the answer: a broken upload already fails
        // the origin's body (the sink is released without `end`, so `ChannelBody` errors),
        // and an origin that has read a whole `Content-Length` body may answer, and drop
        // the body, before `end` arrives. So only the origin's outcome counts; `upload` is
        // held until then, since dropping it cancels the gateway's pipe.
        let served = serve.await;
        drop(upload);
        let response = match served {
            Ok(response) => response,
            Err(err) => {
                info!("{line} 502 {:.1?} ({err})", started.elapsed());
                return Err(failed(err));
            }
        };
        let status = response.status();
        let chunk = self.agreed.get().chunk;
        let outcome = respond(response, responder, &mut results, chunk).await;
        match &outcome {
            Ok(()) => info!("{line} {} {:.1?}", status.as_u16(), started.elapsed()),
            Err(err) => info!(
                "{line} {} {:.1?} (cut: {err})",
                status.as_u16(),
                started.elapsed()
            ),
        }
        outcome
    }

    async fn connect_web_socket(
        self: Rc<Self>,
        params: fetcher::ConnectWebSocketParams,
        mut results: fetcher::ConnectWebSocketResults,
    ) -> Result<(), capnp::Error> {
        let started = Instant::now();
        let params = params.get()?;
        let wire = params.get_request()?;
        let mut request = Request::new(());
        *request.uri_mut() =
            Uri::from_maybe_shared(Bytes::copy_from_slice(wire.get_path()?)).map_err(failed)?;
        *request.headers_mut() = capstan::headers::read(wire.get_headers()?)?;
        let public = params.get_public_socket()?;
        let line = format!("WS {}", request.uri());

        // The origin's socket refuses (1009) what the gateway would not take.
        let max_message = self.agreed.get().ws_message;
        let handshake = self.origin.connect_websocket(request, max_message).await;
        let mut answer = results.get();
        match handshake {
            Ok(Handshake::Accepted { response, socket }) => {
                info!(
                    "{line} {} {:.1?}",
                    response.status().as_u16(),
                    started.elapsed()
                );
                write_head(
                    answer.reborrow().init_response(),
                    response.status(),
                    response.headers(),
                );
                let local = websocket::open(*socket, public, max_message, &self.counters);
                answer.set_local_socket(local);
            }
            Ok(Handshake::Refused(response)) => {
                info!(
                    "{line} {} {:.1?} (refused)",
                    response.status().as_u16(),
                    started.elapsed()
                );
                let mut head = answer.init_response();
                write_head(head.reborrow(), response.status(), response.headers());
                head.set_body(response.body());
            }
            Err(err) => {
                info!("{line} 502 {:.1?} ({err})", started.elapsed());
                return Err(failed(err));
            }
        }
        Ok(())
    }

    async fn ping(
        self: Rc<Self>,
        _: fetcher::PingParams,
        _: fetcher::PingResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
}

/// Writes a response's status and end-to-end headers.
fn write_head(mut wire: response::Builder<'_>, status: StatusCode, headers: &HeaderMap) {
    wire.set_status(status.as_u16());
    capstan::headers::write(headers, &[], |n| wire.reborrow().init_headers(n));
}

/// Sends the origin's response: inline in the results when it is small and of known
/// length, otherwise head through `responder.start` and body through its `ByteStream`.
async fn respond(
    response: Response<OriginBody>,
    responder: responder::Client,
    results: &mut fetcher::FetchResults,
    chunk: usize,
) -> Result<(), capnp::Error> {
    let (parts, body) = response.into_parts();
    let small = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= chunk as u64);
    if small {
        let bytes = body.collect().await.map_err(failed)?.to_bytes();
        let mut wire = results.get().init_response();
        write_head(wire.reborrow(), parts.status, &parts.headers);
        wire.set_body(&bytes);
        return Ok(());
    }
    let mut start = responder.start_request();
    write_head(start.get().init_response(), parts.status, &parts.headers);
    let sink = start.send().promise.await?.get()?.get_body()?;
    pump(body, &sink, chunk).await.map_err(failed)
}
