//! The capstan protocol: the Cap'n Proto schema, its generated code, and the glue both ends share.
//!
//! # Layout
//! - [`capstan_capnp`]: code generated from `schema/capstan.capnp` (the contract).
//! - [`transport`]: an `RpcSystem` over TCP or over a WebSocket's binary messages.
//! - [`coalesce`]: the write-behind buffer under it, one write per burst of messages.
//! - [`body`]: HTTP bodies in and out of `ByteStream` capabilities.
//! - [`gauge`]: counts of live sockets, tasks and capabilities.
//! - [`headers`]: HTTP header lists on the wire, minus hop-by-hop headers.
//! - [`limits`]: the size limits both ends declare, and the ones they agree on.
//! - [`local`]: a thread with a `LocalSet`, for the gateway's and the tunnel's threads.
//! - [`name`]: tunnel names (DNS labels) and random ones.
//! - [`websocket`]: WebSocket messages, close codes and limits on the wire.
//!
//! The gateway lives in `capstan-gateway`, the tunnel client and the `capstan` CLI in
//! `capstan-client`.

pub mod body;
pub mod coalesce;
pub mod gauge;
pub mod headers;
pub mod limits;
pub mod local;
pub mod name;
pub mod transport;
pub mod websocket;

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod capstan_capnp {
    //! Generated from `schema/capstan.capnp`; read the schema for the documentation.
    include!(concat!(env!("OUT_DIR"), "/capstan_capnp.rs"));
}

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod example_capnp {
    //! Generated from `schema/example.capnp`: the `Counter` that examples and tests serve
    //! through a tunneled WebSocket. Not part of the protocol.
    include!(concat!(env!("OUT_DIR"), "/example_capnp.rs"));
}

/// Path on the gateway's public port where tunnels open their WebSocket.
pub const CONNECT_PATH: &str = "/_capstan/connect";

/// Largest body carried inline in `fetch` or its result, and largest `ByteStream.write`.
///
/// 64 KiB keeps one RPC message small while letting most API responses and pages travel in
/// a single round trip.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Largest Cap'n Proto message either side accepts, in bytes.
///
/// A bigger message aborts the whole connection (capnp-rpc has no per-call limit), so every
/// sender caps what it puts in one message well below this: bodies travel in chunks of
/// at most [`MAX_CHUNK`].
pub const MAX_RPC_MESSAGE: usize = 32 * 1024 * 1024;

/// Most `fetch` calls in flight per tunnel before the gateway answers 503: capnp-rpc
/// queues ordinary calls without limit, so the gateway bounds them itself.
pub const DEFAULT_MAX_INFLIGHT: usize = 512;

/// Bytes of `-> stream` calls in flight per capability before the caller waits.
///
/// 256 KiB keeps a loopback body near 1 GB/s (64 KiB measured 0.9 GB/s) while bounding
/// what one slow visitor can park in memory.
pub const STREAM_WINDOW: usize = 256 * 1024;
