//! HTTP through the tunnel: GET and POST of small and large bodies checked byte for byte
//! or by sha256, and the health probe.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capstan_bench::pattern::{self, PatternBody};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::Rng as _;
use tokio::net::TcpStream;

use crate::tally::{Clean, Outcome};
use crate::traffic::{Ctx, ERROR_PAUSE, MAX_OPS, OP_TIMEOUT};

/// Bodies up to this size travel inline in the `fetch` call; larger ones stream.
const INLINE_MAX: u64 = 64 * 1024;

pub(crate) type ReqBody = BoxBody<Bytes, Infallible>;

/// A keep-alive connection to the gateway, and when it was opened: an error on it is
/// explained by any fault since then.
pub(crate) struct Conn {
    sender: SendRequest<ReqBody>,
    pub(crate) opened: Instant,
}

/// One HTTP operation and what it checks.
#[derive(Debug)]
enum Op {
    Get(u64),
    /// A POST of this many pattern bytes; `true` sends it chunked, without a length.
    Post(u64, bool),
}

impl Op {
    fn pick(rng: &mut StdRng, ctx: &Ctx, large: bool) -> Op {
        let size = if large {
            rng.random_range(ctx.large.0..=ctx.large.1)
        } else {
            rng.random_range(0..=INLINE_MAX)
        };
        if rng.random_bool(0.5) {
            Op::Get(size)
        } else {
            Op::Post(size, rng.random_bool(0.3))
        }
    }

    fn name(&self) -> &'static str {
        match (self, self.size() > INLINE_MAX) {
            (Op::Get(_), false) => "get_small",
            (Op::Get(_), true) => "get_large",
            (Op::Post(..), false) => "post_small",
            (Op::Post(..), true) => "post_large",
        }
    }

    fn size(&self) -> u64 {
        match self {
            Op::Get(n) | Op::Post(n, _) => *n,
        }
    }
}

/// Small (`large` false) or large GETs and POSTs on a keep-alive connection, a new one
/// after any error, until the phase stops.
pub(crate) async fn worker(ctx: Arc<Ctx>, mut rng: StdRng, large: bool) {
    let mut conn: Option<Conn> = None;
    for _ in 0..MAX_OPS {
        if ctx.stopped() {
            break;
        }
        let op = Op::pick(&mut rng, &ctx, large);
        let since = conn.as_ref().map_or_else(Instant::now, |c| c.opened);
        let result = tokio::time::timeout(OP_TIMEOUT, run(&ctx, &mut conn, &op)).await;
        let outcome = match result {
            Ok(Ok(())) => {
                ctx.tally.ok(op.name(), op.size());
                continue;
            }
            Ok(Err(outcome)) => outcome,
            Err(_) => Outcome::Failure("timeout", format!("{op:?} took over {OP_TIMEOUT:?}")),
        };
        conn = None;
        ctx.tally.record(op.name(), since, outcome);
        tokio::time::sleep(ERROR_PAUSE).await;
    }
}

async fn run(ctx: &Ctx, conn: &mut Option<Conn>, op: &Op) -> Result<(), Outcome> {
    let (method, path, body) = match *op {
        Op::Get(n) => (Method::GET, format!("/bytes?n={n}"), Empty::new().boxed()),
        Op::Post(n, false) => (
            Method::POST,
            "/sink".to_owned(),
            PatternBody::new(n).boxed(),
        ),
        Op::Post(n, true) => (
            Method::POST,
            "/sink".to_owned(),
            Chunked(PatternBody::new(n)).boxed(),
        ),
    };
    let response = send(ctx, conn, method, &path, body).await?;
    match *op {
        Op::Get(n) => check_pattern(response.into_body(), n).await,
        Op::Post(n, _) => {
            let answer = read_all(response.into_body()).await?;
            let expected = pattern::sha256_hex(n);
            if answer != expected.as_bytes() {
                let answer = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
                return Err(Outcome::WrongBytes(format!(
                    "POST of {n} bytes: the origin hashed {answer:?}, expected {expected}"
                )));
            }
            Ok(())
        }
    }
}

/// Sends one request on `conn` (opened first if needed) and returns the response once it
/// is a 200; the gateway's error statuses become clean errors.
pub(crate) async fn send(
    ctx: &Ctx,
    conn: &mut Option<Conn>,
    method: Method,
    path: &str,
    body: ReqBody,
) -> Result<Response<Incoming>, Outcome> {
    if conn.is_none() {
        *conn = Some(connect(ctx).await?);
    }
    let sender = &mut conn.as_mut().expect("connected above").sender;
    sender.ready().await.map_err(|e| hyper_error(&e))?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, &ctx.host)
        .body(body)
        .map_err(|e| Outcome::Failure("bad_request", e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| hyper_error(&e))?;
    let status = response.status();
    let clean = match status {
        StatusCode::OK => return Ok(response),
        StatusCode::BAD_GATEWAY => Clean::Http502,
        StatusCode::SERVICE_UNAVAILABLE => Clean::Http503,
        StatusCode::NOT_FOUND => Clean::Http404,
        _ => return Err(Outcome::Failure("bad_status", format!("{path}: {status}"))),
    };
    // The gateway's error text names the cause; keep it for the report.
    let text = read_all(response.into_body()).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text[..text.len().min(200)])
        .trim()
        .to_owned();
    Err(Outcome::Clean(clean, format!("{path}: {status} {text}")))
}

async fn connect(ctx: &Ctx) -> Result<Conn, Outcome> {
    let opened = Instant::now();
    let stream = TcpStream::connect(ctx.addr)
        .await
        .map_err(|e| io_error(&e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Outcome::Failure("socket", e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(&e))?;
    // Ends when `sender` is dropped or the connection fails; the failure reaches `sender`.
    tokio::spawn(connection);
    Ok(Conn { sender, opened })
}

/// A socket error: refused means no gateway listens; reset or EOF, a connection cut.
pub(crate) fn io_error(err: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => Outcome::Clean(Clean::Refused, err.to_string()),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
            Outcome::Clean(Clean::Closed, err.to_string())
        }
        _ => Outcome::Failure("io_error", err.to_string()),
    }
}

/// A hyper error before the response head: the connection closed or was reset.
fn hyper_error(err: &hyper::Error) -> Outcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_error(io);
        }
        source = e.source();
    }
    if err.is_incomplete_message() || err.is_closed() || err.is_canceled() {
        return Outcome::Clean(Clean::Closed, err.to_string());
    }
    Outcome::Failure("http_error", format!("{err:#}"))
}

/// Reads a small body whole; an error mid-way is a cut.
async fn read_all(body: Incoming) -> Result<Bytes, Outcome> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| Outcome::Clean(Clean::BodyCut, e.to_string()))
}

/// Checks a body against the first `n` pattern bytes as it arrives; a body that ends
/// without error but short is wrong bytes, as a truncated copy would be.
async fn check_pattern<B>(mut body: B, n: u64) -> Result<(), Outcome>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Outcome::Clean(Clean::BodyCut, format!("after {offset} of {n} bytes: {e}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if offset + data.len() as u64 > n {
            return Err(Outcome::WrongBytes(format!("GET {n}: more than {n} bytes")));
        }
        if let Some(at) = first_difference(offset, &data) {
            return Err(Outcome::WrongBytes(format!(
                "GET {n}: byte {at} differs from the pattern"
            )));
        }
        offset += data.len() as u64;
    }
    if offset != n {
        return Err(Outcome::WrongBytes(format!(
            "GET {n}: the body ended cleanly after {offset} bytes"
        )));
    }
    Ok(())
}

/// The offset of the first byte of `data` (found at `offset`) that is not the pattern's.
fn first_difference(offset: u64, data: &[u8]) -> Option<u64> {
    // The pattern is made in 8-byte words: start at the word holding `offset`.
    let aligned = offset - offset % 8;
    let skip = (offset - aligned) as usize;
    let expected = pattern::chunk(aligned, skip + data.len());
    let expected = &expected[skip..];
    let at = data.iter().zip(expected).position(|(a, b)| a != b)?;
    Some(offset + at as u64)
}

/// A body without a size, so that hyper sends it chunked and the gateway streams it.
struct Chunked(PatternBody);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
}

/// One GET of 4 KiB on a new connection: true when it answers 200 with the right bytes.
pub(crate) async fn probe(ctx: &Ctx) -> bool {
    const SIZE: u64 = 4096;
    let mut conn = None;
    let attempt = async {
        let response = send(
            ctx,
            &mut conn,
            Method::GET,
            &format!("/bytes?n={SIZE}"),
            Empty::new().boxed(),
        )
        .await?;
        check_pattern(response.into_body(), SIZE).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_found_at_any_offset() {
        let mut data = pattern::chunk(8, 100).to_vec();
        assert_eq!(first_difference(13, &data[5..]), None);
        data[50] ^= 1;
        assert_eq!(first_difference(13, &data[5..]), Some(58));
    }

    /// A body of `frames`, each a piece of data or an error.
    fn body(
        frames: Vec<Result<Bytes, &'static str>>,
    ) -> impl Body<Data = Bytes, Error = &'static str> + Unpin {
        http_body_util::StreamBody::new(futures::stream::iter(
            frames.into_iter().map(|f| f.map(Frame::data)),
        ))
    }

    fn kind(result: Result<(), Outcome>) -> &'static str {
        match result {
            Ok(()) => "ok",
            Err(Outcome::Clean(clean, _)) => clean.name(),
            Err(Outcome::WrongBytes(_)) => "wrong_bytes",
            Err(Outcome::Failure(kind, _)) => kind,
        }
    }

    #[tokio::test]
    async fn a_short_body_is_wrong_unless_it_ends_with_an_error() {
        let whole = pattern::chunk(0, 1000);
        let ok = body(vec![Ok(whole.slice(..300)), Ok(whole.slice(300..))]);
        assert_eq!(kind(check_pattern(ok, 1000).await), "ok");
        let short = body(vec![Ok(whole.slice(..300))]);
        assert_eq!(kind(check_pattern(short, 1000).await), "wrong_bytes");
        let cut = body(vec![Ok(whole.slice(..300)), Err("reset")]);
        assert_eq!(kind(check_pattern(cut, 1000).await), "body_cut");
        let mut bad = whole.to_vec();
        bad[700] ^= 0x80;
        let altered = body(vec![Ok(Bytes::from(bad))]);
        assert_eq!(kind(check_pattern(altered, 1000).await), "wrong_bytes");
    }
}
