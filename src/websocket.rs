//! WebSocket messages and close frames on the wire, shared by both ends of a tunneled socket.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::capstan_capnp::{message, web_socket_handle};

/// Handshake headers that belong to one hop: each hop does its own key exchange and
/// negotiates its own extensions (permessage-deflate). `Sec-WebSocket-Protocol` is not in
/// the list: the subprotocol is negotiated end to end.
pub const PER_HOP_HEADERS: [&str; 4] = [
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

/// Default cap on one WebSocket message, each way.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The largest cap allowed: one message must fit in one RPC message with room to spare,
/// since an oversized RPC message would kill the whole tunnel connection.
pub const MAX_MESSAGE_LIMIT: usize = crate::MAX_RPC_MESSAGE - 1024 * 1024;

/// "Going away": what visitors and origins get when the other side vanished.
pub const GOING_AWAY: u16 = 1001;
/// "Message too big": what a socket gets for a message over the cap.
pub const TOO_BIG: u16 = 1009;
/// "No status received": a close without a code.
pub const NO_STATUS: u16 = 1005;

/// Bytes each socket reads at a time. tungstenite allocates (and touches) this much per
/// socket up front, and its default of 128 KiB would make an idle socket cost about that
/// on each side. At 2 KiB, gateway plus tunnel hold an idle socket in about 15 KiB
/// (4 KiB: 18.6 KiB). The price is paid by big messages, read 2 KiB per call: a 64 KiB
/// echo took about 10% longer (docs/benchmarks.md).
const READ_BUFFER: usize = 2 * 1024;

/// Bytes a socket gathers before writing, so that a burst of small messages shares a
/// write. The buffer itself grows only as frames need it.
const WRITE_BUFFER: usize = 4 * 1024;

/// tungstenite settings for a socket whose messages may be up to `max_message` bytes.
pub fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // Bounded: a writer that outruns its socket waits instead of buffering more.
        .max_write_buffer_size(WRITE_BUFFER + max_message + 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// The error a `send` of `len` bytes over the socket's `cap` fails with; the socket is
/// closed with 1009.
pub fn too_big(len: usize, cap: usize) -> capnp::Error {
    capnp::Error::failed(format!(
        "message too big: {len} bytes is over this socket's cap of {cap} bytes \
         (Limits.maxWsMessage); the socket is closed with 1009"
    ))
}

/// Fills a `send` request with `message`; returns false for frames that are not data.
pub fn write_message(builder: message::Builder<'_>, message: &Message) -> bool {
    let mut builder = builder;
    match message {
        Message::Text(text) => builder.set_text(text.as_str()),
        Message::Binary(data) => builder.set_binary(data),
        _ => return false,
    }
    true
}

/// Reads a message off the wire into a tungstenite message.
pub fn read_message(reader: message::Reader<'_>) -> capnp::Result<Message> {
    Ok(match reader.which()? {
        message::Text(text) => Message::text(text?.to_str()?),
        message::Binary(data) => Message::binary(Bytes::copy_from_slice(data?)),
    })
}

/// Sends one message on `handle`, awaiting flow control. Control frames are skipped.
pub async fn send(handle: &web_socket_handle::Client, message: &Message) -> capnp::Result<()> {
    let mut request = handle.send_request();
    if !write_message(request.get().init_message(), message) {
        return Ok(());
    }
    request.send().await
}

/// Calls `close(code, reason)` on `handle` and waits for it to be delivered.
pub async fn close(
    handle: &web_socket_handle::Client,
    code: u16,
    reason: &str,
) -> capnp::Result<()> {
    let mut request = handle.close_request();
    request.get().set_code(code);
    request.get().set_reason(reason);
    request.send().promise.await.map(drop)
}

/// Ends a socket's writing half: flushes the close frame queued on it, or the reply to a
/// close the peer sent, which tungstenite queues itself and sends only on a later write.
///
/// A split sink holds one message back; when that one is refused (nothing may be sent
/// after a close), the first `close` fails before it reaches the socket, and the reply
/// would be lost. The slot is empty after that failure, so a second `close` gets there.
pub async fn finish<S>(sink: &mut S)
where
    S: futures::Sink<Message> + Unpin,
{
    use futures::SinkExt;
    if sink.close().await.is_err() {
        let _ = sink.close().await;
    }
}

/// The code and reason of a received close frame (1005 when it had none).
pub fn from_frame(frame: Option<&CloseFrame>) -> (u16, String) {
    match frame {
        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
        None => (NO_STATUS, String::new()),
    }
}

/// The close frame to send for `code`: none for 1005, and 1001 for codes that must never
/// appear on the wire (1006, 1015, out of range).
pub fn to_frame(code: u16, reason: &str) -> Option<CloseFrame> {
    if code == NO_STATUS {
        return None;
    }
    let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
    let code = if sendable { code } else { GOING_AWAY };
    // A close reason is at most 123 bytes; cut at a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].to_owned().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's situation: a message waits in the split sink when the peer's close
    /// arrives; the reply must still go out.
    #[tokio::test(flavor = "current_thread")]
    async fn the_reply_to_a_close_goes_out_past_a_refused_message() {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::WebSocketStream;

        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
        let mut peer = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
        let (mut sink, mut stream) = server.split();
        peer.send(Message::Close(None)).await.unwrap();
        // An echo on its way, held in the sink's slot, then the peer's close is read.
        sink.feed(Message::text("late echo")).await.unwrap();
        assert!(matches!(
            stream.next().await,
            Some(Ok(Message::Close(None)))
        ));
        finish(&mut sink).await;
        let reply = tokio::time::timeout(std::time::Duration::from_secs(5), peer.next()).await;
        match reply {
            Ok(Some(Ok(Message::Close(_)))) => {}
            other => panic!("the peer must get the close reply, got {other:?}"),
        }
    }

    #[test]
    fn close_codes_map_to_sendable_frames() {
        assert!(to_frame(NO_STATUS, "").is_none());
        for code in [1000u16, 1001, 1008, 1009, 3000, 4999] {
            assert_eq!(u16::from(to_frame(code, "r").unwrap().code), code);
        }
        for code in [1006u16, 1015, 999, 5000] {
            assert_eq!(u16::from(to_frame(code, "").unwrap().code), GOING_AWAY);
        }
        let long = "é".repeat(100);
        assert!(to_frame(1000, &long).unwrap().reason.len() <= 123);
    }
}
