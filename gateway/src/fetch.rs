//! One visitor HTTP request as one `Fetcher.fetch` call, answered inline or streamed.

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use capstan::capstan_capnp::fetcher;
use capstan::MAX_CHUNK;
use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{
    check_final_status, full, BodySourceImpl, GatewayBody, ResponderImpl, StreamedHead, Upload,
};
use crate::error::ProxyError;
use crate::registry::Tunnel;
use crate::response::TunnelBody;
use crate::State;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

enum RequestBody {
    Inline(Bytes),
    Streamed(Incoming),
}

type FetchPromise = capnp::capability::Promise<
    capnp::capability::Response<fetcher::fetch_results::Owned>,
    capnp::Error,
>;

/// Carries `request` through `tunnel` and returns the origin's answer.
///
/// The response head is returned as soon as the tunnel sends it; the body then streams.
pub(crate) async fn proxy(
    state: &State,
    tunnel: Rc<Tunnel>,
    visitor: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, ProxyError> {
    let max_body = state.options.max_request_body.unwrap_or(u64::MAX);
    if request.body().size_hint().lower() > max_body {
        return Err(ProxyError::TooLarge(max_body)); // Content-Length says so already.
    }
    let permit = tunnel.admit()?;
    let (mut parts, body) = request.into_parts();
    let over = Rc::new(std::cell::Cell::new(false));
    add_forwarded(state, &mut parts.headers, visitor);
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());

    // A small body of known length rides inside the call: one round trip in all.
    let body = if body.is_end_stream() {
        RequestBody::Inline(Bytes::new())
    } else if body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= tunnel.limits.chunk.min(MAX_CHUNK) as u64)
    {
        let collected = body
            .collect()
            .await
            .map_err(|err| ProxyError::BadRequest(format!("reading the body: {err}")))?;
        RequestBody::Inline(collected.to_bytes())
    } else {
        RequestBody::Streamed(body)
    };
    let (responder, mut head_rx) = ResponderImpl::client();
    let mut call = tunnel.fetcher.fetch_request();
    {
        let mut params = call.get();
        let mut wire = params.reborrow().init_request();
        wire.set_method(parts.method.as_str());
        wire.set_path(path.as_bytes());
        capstan::headers::write(&parts.headers, &[], |n| wire.reborrow().init_headers(n));
        match body {
            RequestBody::Inline(bytes) => wire.set_body(&bytes),
            RequestBody::Streamed(body) => {
                let upload = Upload::new(body, max_body, over.clone());
                params.set_body(BodySourceImpl::client(upload, tunnel.limits.chunk));
            }
        }
        params.set_responder(responder);
    }
    let mut promise = call.send().promise;

    // The responder is released when the tunnel answers inline, possibly before the
    // answer itself arrives: a dropped sender means "no streamed head", not an error.
    let started = async {
        match (&mut head_rx).await {
            Ok(head) => head,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        head = started => {
            let head = head.map_err(ProxyError::bad_answer)?;
            Ok(streamed_response(state, head, Some(promise), permit))
        }
        result = &mut promise => {
            if over.get() {
                return Err(ProxyError::TooLarge(max_body));
            }
            let answer = result.map_err(ProxyError::from_capnp)?;
            let answer = answer.get().map_err(ProxyError::bad_answer)?;
            if answer.has_response() {
                return inline_response(answer).map_err(ProxyError::bad_answer);
            }
            match head_rx.try_recv() {
                Ok(Ok(head)) => Ok(streamed_response(state, head, None, permit)),
                Ok(Err(err)) => Err(ProxyError::bad_answer(err)),
                Err(_) => Err(ProxyError::Protocol(
                    "fetch returned no response and never called Responder.start".into(),
                )),
            }
        }
    }
}

fn inline_response(
    answer: fetcher::fetch_results::Reader<'_>,
) -> capnp::Result<Response<GatewayBody>> {
    let wire = answer.get_response()?;
    let (status, headers) = capstan::headers::read_head(wire)?;
    check_final_status(status)?;
    let body = wire.get_body()?;
    if body.len() > MAX_CHUNK {
        return Err(capstan::body::over_limit(
            "an inline response body",
            body.len(),
            MAX_CHUNK,
        ));
    }
    let mut response = Response::new(full(Bytes::copy_from_slice(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn streamed_response(
    state: &State,
    head: StreamedHead,
    call: Option<FetchPromise>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<GatewayBody> {
    let length = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let finishing = state.finishing.clone();
    let body = TunnelBody::new(head.body, call, length, finishing, permit);
    let mut response = Response::new(Box::pin(body) as GatewayBody);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
}

/// Sets `X-Forwarded-For` to the visitor's address and `-Proto` and `-Host` to what the
/// visitor asked for, as reverse proxies do, so the origin can tell who asked and under what
/// name. What the visitor sent in them, and in `Forwarded`, is dropped: anyone could claim
/// any address there. A gateway behind a proxy that sets them (`trust_forwarded`) appends.
pub(crate) fn add_forwarded(state: &State, headers: &mut HeaderMap, visitor: SocketAddr) {
    let ip = visitor.ip().to_string();
    let trusted = state.options.trust_forwarded;
    let earlier = headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
    let forwarded_for = match earlier {
        Some(earlier) if trusted => format!("{earlier}, {ip}"),
        _ => ip,
    };
    if !trusted {
        headers.remove(http::header::FORWARDED);
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let scheme = state.public_scheme();
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_str(scheme).unwrap_or(HeaderValue::from_static("http")),
    );
    match headers.get(HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}
