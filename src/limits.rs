//! The size limits both ends declare at registration, and the ones a connection agrees on.

use crate::capstan_capnp::limits;
use crate::websocket::DEFAULT_MAX_MESSAGE;
use crate::{MAX_CHUNK, MAX_RPC_MESSAGE};

/// Room an RPC message needs beyond the WebSocket message it carries: the call's header,
/// the capability table, segment framing.
const RPC_OVERHEAD: usize = 1024 * 1024;

/// Sizes in bytes that one end accepts, or (from [`Limits::agree`]) that both do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message in one `send`.
    pub ws_message: usize,
    /// Largest inline body and `ByteStream.write`.
    pub chunk: usize,
    /// Largest Cap'n Proto message read; a bigger one aborts the connection.
    pub rpc_message: usize,
}

impl Default for Limits {
    /// The defaults of docs/protocol.md section 6, also what a peer that says nothing gets.
    fn default() -> Self {
        Self {
            ws_message: DEFAULT_MAX_MESSAGE,
            chunk: MAX_CHUNK,
            rpc_message: MAX_RPC_MESSAGE,
        }
    }
}

impl Limits {
    /// What a Rust end accepts when its WebSocket message cap is `ws_message`.
    pub fn with_ws_message(ws_message: usize) -> Self {
        Self {
            ws_message,
            ..Self::default()
        }
    }

    /// The limits a sender keeps to: the smaller of each pair, with room for a whole
    /// WebSocket message inside one RPC message of the receiver's.
    pub fn agree(self, peer: Self) -> Self {
        let rpc_message = self.rpc_message.min(peer.rpc_message);
        Self {
            ws_message: self
                .ws_message
                .min(peer.ws_message)
                .min(rpc_message.saturating_sub(RPC_OVERHEAD)),
            chunk: self.chunk.min(peer.chunk),
            rpc_message,
        }
    }

    /// Fills `builder` with these limits.
    pub fn write(&self, mut builder: limits::Builder<'_>) {
        let wire = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        builder.set_max_ws_message(wire(self.ws_message));
        builder.set_max_chunk(wire(self.chunk));
        builder.set_max_rpc_message(wire(self.rpc_message));
    }

    /// Reads a peer's limits; a field it left at zero (or a peer that sent none) keeps
    /// the default.
    pub fn read(reader: Option<limits::Reader<'_>>) -> Self {
        let defaults = Self::default();
        let Some(reader) = reader else {
            return defaults;
        };
        let or = |n: u32, default: usize| if n == 0 { default } else { n as usize };
        Self {
            ws_message: or(reader.get_max_ws_message(), defaults.ws_message),
            chunk: or(reader.get_max_chunk(), defaults.chunk),
            rpc_message: or(reader.get_max_rpc_message(), defaults.rpc_message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_takes_the_smaller_of_each_and_fits_messages_in_rpc() {
        let ours = Limits::with_ws_message(8 << 20);
        let theirs = Limits {
            ws_message: 20 << 20,
            chunk: 16 * 1024,
            rpc_message: 4 << 20,
        };
        let agreed = ours.agree(theirs);
        assert_eq!(agreed, theirs.agree(ours));
        assert_eq!(agreed.chunk, 16 * 1024);
        assert_eq!(agreed.rpc_message, 4 << 20);
        assert_eq!(agreed.ws_message, (4 << 20) - RPC_OVERHEAD);
    }

    #[test]
    fn unset_fields_and_missing_limits_mean_the_defaults() {
        let mut message = capnp::message::Builder::new_default();
        let mut builder = message.init_root::<limits::Builder<'_>>();
        builder.set_max_chunk(1000);
        let read = Limits::read(Some(builder.into_reader()));
        assert_eq!(read.chunk, 1000);
        assert_eq!(read.ws_message, DEFAULT_MAX_MESSAGE);
        assert_eq!(read.rpc_message, MAX_RPC_MESSAGE);
        assert_eq!(Limits::read(None), Limits::default());
    }
}
