//! Deterministic body bytes: the origin serves them and the client checks them by sha256.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Bytes per body frame: the largest inline chunk of capstan and a common socket buffer.
pub const CHUNK: usize = 64 * 1024;

/// The 8 bytes at word `index` of the pattern.
///
/// splitmix64 makes every word distinct, so a dropped, repeated or reordered chunk
/// changes the sha256, and it fills a 100 MiB body in a few milliseconds.
fn word(index: u64) -> [u8; 8] {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

/// The pattern bytes `[offset, offset + len)`; `offset` must be a multiple of 8.
pub fn chunk(offset: u64, len: usize) -> Bytes {
    debug_assert_eq!(offset % 8, 0);
    let mut out = Vec::with_capacity(len + 8);
    let mut index = offset / 8;
    while out.len() < len {
        out.extend_from_slice(&word(index));
        index += 1;
    }
    out.truncate(len);
    Bytes::from(out)
}

/// The sha256, in lowercase hex, of the first `len` pattern bytes.
pub fn sha256_hex(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < len {
        let n = CHUNK.min((len - offset) as usize);
        hasher.update(chunk(offset, n));
        offset += n as u64;
    }
    hex(&hasher.finalize())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP body of the first `len` pattern bytes, with an exact size so that hyper
/// sends `Content-Length` rather than chunked encoding.
#[derive(Debug)]
pub struct PatternBody {
    sent: u64,
    len: u64,
}

impl PatternBody {
    /// A body of `len` bytes.
    pub fn new(len: u64) -> Self {
        PatternBody { sent: 0, len }
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let left = self.len - self.sent;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = CHUNK.min(left as usize);
        let data = chunk(self.sent, n);
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_join_up() {
        let whole = chunk(0, 100);
        let tail = chunk(64, 36);
        assert_eq!(&whole[64..], &tail[..]);
        assert_ne!(&whole[..8], &whole[8..16]);
    }
}
