//! The benchmark origin: one HTTP/1.1 server that every path under test forwards to.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use capstan_bench::pattern::{self, PatternBody};
use clap::Parser;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// The interval between SSE events, as the issue sets it.
const SSE_INTERVAL: Duration = Duration::from_millis(10);

/// Per-socket WebSocket buffers: small, so that 10,000 idle echo sockets stay cheap here
/// and the origin's memory does not crowd the processes being measured.
const WS_BUFFER: usize = 4 * 1024;

/// Serve the benchmark routes; prints `ready ADDR` on stdout once it listens.
///
/// `GET /1k` is 1 KiB; `GET /bytes?n=N` is N pattern bytes with Content-Length; `POST
/// /sink` answers the sha256 hex of the body; `GET /sse[?n=N]` sends an event every 10 ms
/// whose data is its send time in Unix nanoseconds; `GET /events?n=N[&ms=M]` sends N
/// numbered events (`id: I`, `data: I HEX`, HEX the 8 pattern bytes at word I) every M ms,
/// for the soak's order and content checks; `/ws` is a WebSocket echo.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

type Body = BoxBody<Bytes, Infallible>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    capstan_bench::runtime()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("ready {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors during the idle-socket test: wait for some to close.
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(route);
            // Errors here are visitors going away mid-response, which the load causes.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn route(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let n = param("n");
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/1k") => bytes_response(Full::new(Bytes::from_static(&[b'x'; 1024]))),
        (&Method::GET, "/bytes") => bytes_response(PatternBody::new(n.unwrap_or(0))),
        (&Method::POST, "/sink") => sink(req).await,
        (&Method::GET, "/sse") => sse(n),
        (&Method::GET, "/events") => numbered_events(n.unwrap_or(0), param("ms")),
        (_, "/ws") => websocket(req),
        _ => status(StatusCode::NOT_FOUND),
    })
}

fn bytes_response(
    body: impl http_body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
) -> Response<Body> {
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    *response.status_mut() = code;
    response
}

/// Hashes the upload as it arrives, so the answer is ready with the last byte.
async fn sink(req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                }
            }
            Err(_) => return status(StatusCode::BAD_REQUEST),
        }
    }
    let hex = pattern::hex(&hasher.finalize());
    bytes_response(Full::new(Bytes::from(hex)))
}

/// `count` events (or endless), each stamped with the time it is handed to hyper.
fn sse(count: Option<u64>) -> Response<Body> {
    let mut interval = tokio::time::interval(SSE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events =
        futures::stream::unfold((interval, 0u64), move |(mut interval, sent)| async move {
            if count.is_some_and(|c| sent >= c) {
                return None;
            }
            interval.tick().await;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let event = format!("data: {}\n\n", now.as_nanos());
            Some((Ok(Frame::data(Bytes::from(event))), (interval, sent + 1)))
        });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// `count` numbered events, one every `ms` milliseconds (10 by default): each carries
/// its index and the pattern word at that index, so a lost, repeated, reordered or
/// altered event shows. (`/sse` carries send times for latency, which cannot show that.)
fn numbered_events(count: u64, ms: Option<u64>) -> Response<Body> {
    // `interval` panics on a zero period.
    let period = ms.map_or(SSE_INTERVAL, |ms| Duration::from_millis(ms.max(1)));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events =
        futures::stream::unfold((interval, 0u64), move |(mut interval, sent)| async move {
            if sent >= count {
                return None;
            }
            interval.tick().await;
            let word = pattern::hex(&pattern::chunk(sent * 8, 8));
            let event = format!("id: {sent}\ndata: {sent} {word}\n\n");
            Some((Ok(Frame::data(Bytes::from(event))), (interval, sent + 1)))
        });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// Answers the upgrade with 101, then echoes every data message on the upgraded socket.
fn websocket(req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return status(StatusCode::BAD_REQUEST);
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_BUFFER)
            .write_buffer_size(WS_BUFFER);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        echo(ws).await;
    });
    let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Echoes data messages, flushing once per batch of messages that are already read, so
/// pipelined senders are not held to one write per message.
async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(mut message)) = ws.next().await {
        loop {
            if (message.is_binary() || message.is_text()) && ws.feed(message).await.is_err() {
                return;
            }
            match ws.next().now_or_never() {
                Some(Some(Ok(next))) => message = next,
                Some(_) => return,
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}
