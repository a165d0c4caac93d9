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
    // Set when a streamed upload runs past `max_body`; inline bodies were checked above.
    let mut over = None;
    let forwarded = forwarding(state, &mut parts.headers, &parts.uri, visitor);
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
        .is_some_and(|n| n <= tunnel.limits.chunk as u64)
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
        forwarded.write(&parts.headers, |n| wire.reborrow().init_headers(n));
        match body {
            RequestBody::Inline(bytes) => wire.set_body(&bytes),
            RequestBody::Streamed(body) => {
                let flag = Rc::new(std::cell::Cell::new(false));
                over = Some(flag.clone());
                let upload = Upload::new(body, max_body, flag);
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
            if over.as_ref().is_some_and(|over| over.get()) {
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

/// The forwarding headers for a request from `visitor`, as reverse proxies set them, so
/// that the origin can tell who asked and under what name: `X-Forwarded-For` is the
/// visitor's address, `-Proto` and `-Host` what it asked for.
///
/// They are taken out of `headers` and returned, to be written after the end-to-end
/// headers: a visitor that names them in `Connection` cannot strip them. What the visitor
/// sent in them, and in `Forwarded`, is dropped, since anyone could claim any address; a
/// gateway behind a proxy that sets them (`trust_forwarded`) appends instead. An
/// absolute-form target's host replaces `Host` (RFC 9112 section 3.2.2), as it routed
/// the request.
pub(crate) fn forwarding(
    state: &State,
    headers: &mut HeaderMap,
    uri: &http::Uri,
    visitor: SocketAddr,
) -> Forwarding {
    if let Some(host) = uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        headers.insert(HOST, host);
    }
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
    for name in [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST] {
        headers.remove(name);
    }
    Forwarding {
        for_: HeaderValue::from_str(&forwarded_for).ok(),
        proto: state.forwarded_proto.clone(),
        host: headers.get(HOST).cloned(),
    }
}

/// The gateway's own forwarding headers for one request (see [`forwarding`]); each is left
/// out when it would not be a valid header value.
pub(crate) struct Forwarding {
    for_: Option<HeaderValue>,
    proto: Option<HeaderValue>,
    host: Option<HeaderValue>,
}

impl Forwarding {
    /// Writes `headers` and then these into a request's list.
    pub(crate) fn write<'b>(
        &self,
        headers: &HeaderMap,
        init: impl FnOnce(u32) -> capnp::struct_list::Builder<'b, capstan::capstan_capnp::header::Owned>,
    ) {
        let set = [
            (X_FORWARDED_FOR, &self.for_),
            (X_FORWARDED_PROTO, &self.proto),
            (X_FORWARDED_HOST, &self.host),
        ];
        // On the stack: this runs for every request.
        let mut extra: [(&str, &[u8]); 3] = [("", b""); 3];
        let mut n = 0;
        for (name, value) in set {
            if let Some(value) = value {
                extra[n] = (name, value.as_bytes());
                n += 1;
            }
        }
        capstan::headers::write(headers, &extra[..n], init);
    }
}
