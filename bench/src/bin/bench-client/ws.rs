//! WebSocket measurements against the origin's `/ws` echo: round trips, pipelined
//! throughput, and the memory of many idle sockets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use capstan_bench::stats::{Json, Samples};
use capstan_bench::{pattern, procfs};
use futures::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::Target;

type Socket = WebSocketStream<TcpStream>;

/// Socket buffers, kept small as in capstan so that 10,000 client sockets fit easily.
const BUFFER: usize = 4 * 1024;

/// Messages fed before a flush, so a deep window still reaches the socket promptly.
const MAX_BATCH: usize = 64;

/// Time one message size may take before its round trips stop early. Some paths stall
/// ~40 ms per big message, which would otherwise stretch a run to minutes.
const SIZE_BUDGET: Duration = Duration::from_secs(5);

/// Round trips that are always timed, budget or not, so that p99 means something.
const MIN_ROUNDS: usize = 20;

async fn connect(target: &Target) -> anyhow::Result<Socket> {
    let stream = TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{}/ws", target.addr).into_client_request()?;
    request
        .headers_mut()
        .insert(http::header::HOST, target.host().parse()?);
    let config = WebSocketConfig::default()
        .read_buffer_size(BUFFER)
        .write_buffer_size(BUFFER);
    let (socket, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(socket)
}

/// Sends `message` and waits for its echo, which must match.
async fn round_trip(socket: &mut Socket, message: &Bytes) -> anyhow::Result<()> {
    socket.send(Message::Binary(message.clone())).await?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(echo))) if echo == *message => return Ok(()),
            Some(Ok(Message::Binary(_))) => bail!("echo differs from what was sent"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
            Some(Err(err)) => return Err(err.into()),
            None => bail!("socket closed"),
        }
    }
}

/// Round trips to time for one size: `count` up to 4 KiB, fewer above, since a 1 MiB
/// echo is about a thousand times the work of a 32 B one.
fn rounds(size: usize, count: usize) -> usize {
    match size {
        0..=4096 => count,
        4097..=65536 => (count / 4).max(MIN_ROUNDS),
        _ => (count / 20).max(MIN_ROUNDS),
    }
}

pub(crate) async fn rtt(target: &Target, sizes: &[usize], count: usize) -> anyhow::Result<String> {
    let mut socket = connect(target).await?;
    let mut json = Json::new();
    for &size in sizes {
        let message = pattern::chunk(0, size);
        let rounds = rounds(size, count);
        // A tenth as many round trips first, untimed, to grow buffers and warm caches.
        for _ in 0..rounds.div_ceil(10).min(MIN_ROUNDS) {
            round_trip(&mut socket, &message).await?;
        }
        let mut samples = Samples::default();
        let start = Instant::now();
        while samples.len() < rounds
            && (samples.len() < MIN_ROUNDS || start.elapsed() < SIZE_BUDGET)
        {
            let t0 = Instant::now();
            round_trip(&mut socket, &message).await?;
            samples.push(t0.elapsed());
        }
        json.num(&format!("size_{size}_rounds"), samples.len() as f64);
        samples.write_to(&mut json, &format!("size_{size}_"));
    }
    Ok(json.finish())
}

pub(crate) async fn pipe(
    target: &Target,
    size: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<String> {
    let (mut sink, mut stream) = connect(target).await?.split();
    let message = pattern::chunk(0, size);
    let credits = Arc::new(Semaphore::new(window));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (credits, stop) = (credits.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                credits.acquire().await?.forget();
                sink.feed(Message::Binary(message.clone())).await?;
                let mut batch = 1;
                while batch < MAX_BATCH {
                    let Ok(permit) = credits.try_acquire() else {
                        break;
                    };
                    permit.forget();
                    sink.feed(Message::Binary(message.clone())).await?;
                    batch += 1;
                }
                sink.flush().await?;
            }
            anyhow::Ok(())
        })
    };
    let start = Instant::now();
    let (count_from, count_to) = (start + warmup, start + warmup + duration);
    let mut counted = 0u64;
    while Instant::now() < count_to {
        match tokio::time::timeout_at(count_to.into(), stream.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Binary(echo)))) if echo.len() == size => {
                credits.add_permits(1);
                if Instant::now() >= count_from {
                    counted += 1;
                }
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(other))) => bail!("unexpected message {other:?}"),
            Ok(Some(Err(err))) => return Err(err.into()),
            Ok(None) => bail!("socket closed"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.abort();
    let mut json = Json::new();
    json.num("size", size as f64)
        .num("window", window as f64)
        .num("messages", counted as f64)
        .num("msgs_s", counted as f64 / duration.as_secs_f64());
    Ok(json.finish())
}

/// Connects, then proves the path end to end with one 32 B echo.
async fn open_live(target: Target) -> anyhow::Result<Socket> {
    let mut socket = connect(&target).await?;
    round_trip(&mut socket, &pattern::chunk(0, 32)).await?;
    Ok(socket)
}

pub(crate) async fn idle(
    target: &Target,
    count: usize,
    pids: &[Vec<u32>; 2],
) -> anyhow::Result<String> {
    let before = pids.each_ref().map(|p| procfs::usage(p));
    let start = Instant::now();
    // A bounded number of handshakes in flight, as a crowd of real visitors would be.
    let results: Vec<anyhow::Result<Socket>> = futures::stream::iter(0..count)
        .map(|_| open_live(target.clone()))
        .buffer_unordered(64)
        .collect()
        .await;
    let open_s = start.elapsed().as_secs_f64();
    let after = pids.each_ref().map(|p| procfs::usage(p));
    let mut sockets = Vec::with_capacity(count);
    let (mut errors, mut last_error) = (0, String::new());
    for result in results {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(err) => {
                errors += 1;
                last_error = format!("{err:#}");
            }
        }
    }
    let open = sockets.len().max(1) as f64;
    let mut json = Json::new();
    json.num("sockets", sockets.len() as f64)
        .num("errors", errors as f64)
        .num("open_s", open_s);
    for (role, (b, a)) in ["gateway", "client"].iter().zip(before.iter().zip(&after)) {
        json.num(&format!("{role}_kib_before"), b.rss_kib as f64)
            .num(&format!("{role}_kib_after"), a.rss_kib as f64)
            .num(
                &format!("{role}_bytes_per_socket"),
                (a.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / open,
            );
    }
    if !last_error.is_empty() {
        json.str("last_error", &last_error);
    }
    drop(sockets);
    Ok(json.finish())
}
