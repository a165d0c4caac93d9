//! WebSocket echo through the tunnel: bursts of text and binary messages, each echo
//! checked byte for byte and in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use rand::rngs::StdRng;
use rand::Rng as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::http::io_error;
use crate::tally::{Clean, Outcome};
use crate::traffic::{Ctx, ERROR_PAUSE, MAX_OPS, OP_TIMEOUT};

/// The largest message: well under the ~4 MiB where the tunnel's WebSocket transport is
/// known to stall (being fixed separately), and above the 64 KiB inline body size.
const MAX_MESSAGE: usize = 256 * 1024;

/// Messages sent before their echoes are read: enough to check that order holds when
/// several are in flight.
const MAX_BURST: usize = 8;

type Socket = WebSocketStream<TcpStream>;

/// Sockets of 20 to 200 messages each, closed with 1000, until the phase stops.
pub(crate) async fn worker(ctx: Arc<Ctx>, mut rng: StdRng) {
    for _ in 0..MAX_OPS {
        if ctx.stopped() {
            break;
        }
        let since = Instant::now();
        let outcome = match tokio::time::timeout(OP_TIMEOUT * 4, socket(&ctx, &mut rng)).await {
            Ok(Ok(())) => {
                ctx.tally.ok("ws_socket", 0);
                continue;
            }
            Ok(Err(outcome)) => outcome,
            // Each step has its own timeout; this bounds the whole socket as well.
            Err(_) => Outcome::Failure("timeout", "a WebSocket outlived its bound".into()),
        };
        ctx.tally.record("ws", since, outcome);
        tokio::time::sleep(ERROR_PAUSE).await;
    }
}

async fn socket(ctx: &Ctx, rng: &mut StdRng) -> Result<(), Outcome> {
    let mut ws = timed(connect(ctx)).await?;
    let messages = rng.random_range(20..=200usize);
    let mut sent = 0;
    while sent < messages && !ctx.stopped() {
        let at = format!("at message {sent} of {messages}");
        sent += burst(ctx, rng, &mut ws, messages - sent)
            .await
            .map_err(|o| o.context(&at))?;
    }
    let at = format!("closing after {sent} messages");
    timed(close(&mut ws)).await.map_err(|o| o.context(&at))
}

/// Sends up to `left` messages (at most `MAX_BURST`) before reading any echo, then
/// checks each echo in order; returns how many went.
async fn burst(
    ctx: &Ctx,
    rng: &mut StdRng,
    ws: &mut Socket,
    left: usize,
) -> Result<usize, Outcome> {
    let count = rng.random_range(1..=MAX_BURST).min(left);
    let mut expected = VecDeque::with_capacity(count);
    for _ in 0..count {
        let message = make_message(rng);
        timed(async { ws.feed(message.clone()).await.map_err(|e| ws_error(&e)) }).await?;
        expected.push_back(message);
    }
    timed(async { ws.flush().await.map_err(|e| ws_error(&e)) }).await?;
    for (i, want) in expected.iter().enumerate() {
        let got = timed(next_data(ws)).await?;
        if got != *want {
            return Err(Outcome::WrongBytes(describe(i, &got, want)));
        }
        let kind = if want.is_text() {
            "ws_text"
        } else {
            "ws_binary"
        };
        ctx.tally.ok(kind, want.len() as u64);
    }
    Ok(count)
}

/// Runs one step under `OP_TIMEOUT`; running out is a hang.
async fn timed<T>(step: impl std::future::Future<Output = Result<T, Outcome>>) -> Result<T, Outcome>
where
    T: Sized,
{
    tokio::time::timeout(OP_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| {
            Err(Outcome::Failure(
                "timeout",
                format!("a WebSocket step took over {OP_TIMEOUT:?}"),
            ))
        })
}

async fn connect(ctx: &Ctx) -> Result<Socket, Outcome> {
    let stream = TcpStream::connect(ctx.addr)
        .await
        .map_err(|e| io_error(&e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| Outcome::Failure("socket", e.to_string()))?;
    let mut request = format!("ws://{}/ws", ctx.addr)
        .into_client_request()
        .map_err(|e| Outcome::Failure("bad_request", e.to_string()))?;
    let host = ctx
        .host
        .parse()
        .map_err(|_| Outcome::Failure("bad_request", "host".into()))?;
    request.headers_mut().insert(http::header::HOST, host);
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| handshake_error(&e))?;
    Ok(socket)
}

/// A failed upgrade: the gateway's error statuses are clean, as for plain requests.
fn handshake_error(err: &WsError) -> Outcome {
    let WsError::Http(response) = err else {
        return ws_error(err);
    };
    let clean = match response.status() {
        StatusCode::BAD_GATEWAY => Clean::Http502,
        StatusCode::SERVICE_UNAVAILABLE => Clean::Http503,
        StatusCode::NOT_FOUND => Clean::Http404,
        status => return Outcome::Failure("bad_status", format!("WebSocket upgrade: {status}")),
    };
    Outcome::Clean(clean, format!("WebSocket upgrade: {}", response.status()))
}

/// A socket error: a connection that went away without a close handshake is a drop.
fn ws_error(err: &WsError) -> Outcome {
    match err {
        WsError::Io(io) => match io_error(io) {
            Outcome::Clean(Clean::Closed, text) => Outcome::Clean(Clean::WsDropped, text),
            other => other,
        },
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::HandshakeIncomplete,
        ) => Outcome::Clean(Clean::WsDropped, err.to_string()),
        WsError::Protocol(ProtocolError::MissingConnectionUpgradeHeader) => {
            Outcome::Clean(Clean::WsHandshakeUnupgraded, err.to_string())
        }
        other => Outcome::Failure("ws_error", other.to_string()),
    }
}

/// The next text or binary message; a close from the gateway must be 1001.
async fn next_data(ws: &mut Socket) -> Result<Message, Outcome> {
    loop {
        match ws.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => return Ok(message),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                return Err(closed_by_peer(
                    frame.map(|f| (f.code, f.reason.to_string())),
                ))
            }
            Some(Err(err)) => return Err(ws_error(&err)),
            None => return Err(Outcome::Clean(Clean::WsDropped, "the socket ended".into())),
        }
    }
}

fn closed_by_peer(frame: Option<(CloseCode, String)>) -> Outcome {
    match frame {
        Some((CloseCode::Away, reason)) => Outcome::Clean(Clean::WsGoingAway, reason),
        Some((code, reason)) => {
            Outcome::Failure("ws_bad_close", format!("closed with {code}: {reason}"))
        }
        None => Outcome::Failure("ws_bad_close", "closed without a code".into()),
    }
}

/// Closes with 1000 and waits for the gateway to finish the handshake; a socket that
/// ends without the gateway's close frame is `WsCloseUnanswered`.
async fn close(ws: &mut Socket) -> Result<(), Outcome> {
    ws.close(None).await.map_err(|e| ws_error(&e))?;
    loop {
        match ws.next().await {
            None | Some(Err(WsError::ConnectionClosed)) => return Ok(()),
            // Our close crossed one of theirs, or an echo still on its way: fine.
            Some(Ok(_)) => {}
            Some(Err(err)) => {
                return Err(match ws_error(&err) {
                    Outcome::Clean(Clean::WsDropped, detail) => {
                        Outcome::Clean(Clean::WsCloseUnanswered, detail)
                    }
                    other => other,
                })
            }
        }
    }
}

/// A text or binary message of up to `MAX_MESSAGE` bytes, mostly small.
fn make_message(rng: &mut StdRng) -> Message {
    let len = match rng.random_range(0..100) {
        0..70 => rng.random_range(0..=1024),
        70..95 => rng.random_range(1025..=64 * 1024),
        _ => rng.random_range(64 * 1024 + 1..=MAX_MESSAGE),
    };
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    if rng.random_bool(0.5) {
        return Message::Binary(Bytes::from(bytes));
    }
    // Printable ASCII, so that the text is valid UTF-8 and still varies byte by byte.
    let text: String = bytes.iter().map(|b| char::from(b' ' + b % 95)).collect();
    Message::text(text)
}

/// What differs between an echo and the message it should repeat.
fn describe(index: usize, got: &Message, want: &Message) -> String {
    let kind = |m: &Message| if m.is_text() { "text" } else { "binary" };
    let (g, w) = (got.clone().into_data(), want.clone().into_data());
    let at = g.iter().zip(w.iter()).position(|(a, b)| a != b);
    format!(
        "echo {index}: got {} of {} bytes, sent {} of {} bytes; first difference at {:?}",
        kind(got),
        g.len(),
        kind(want),
        w.len(),
        at
    )
}
