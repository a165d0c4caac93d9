//! SSE through the tunnel: streams of numbered events, each checked whole and in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capstan_bench::pattern;
use http::Method;
use http_body_util::{BodyExt as _, Empty};
use rand::rngs::StdRng;
use rand::Rng as _;

use crate::http::{send, Conn};
use crate::tally::{Clean, Outcome};
use crate::traffic::{Ctx, ERROR_PAUSE, MAX_OPS, OP_TIMEOUT};

/// Interval between SSE events; a stream of up to 100 lasts up to 2 s.
const SSE_INTERVAL_MS: u64 = 20;

/// Streams of 10 to 100 numbered events, each checked in order, until the phase stops.
pub(crate) async fn worker(ctx: Arc<Ctx>, mut rng: StdRng) {
    let mut conn: Option<Conn> = None;
    for _ in 0..MAX_OPS {
        if ctx.stopped() {
            break;
        }
        let events = rng.random_range(10..=100u64);
        let since = conn.as_ref().map_or_else(Instant::now, |c| c.opened);
        let limit = OP_TIMEOUT + Duration::from_millis(events * SSE_INTERVAL_MS);
        let outcome = match tokio::time::timeout(limit, sse_stream(&ctx, &mut conn, events)).await {
            Ok(Ok(())) => {
                ctx.tally.ok("sse_stream", 0);
                continue;
            }
            Ok(Err(outcome)) => outcome,
            Err(_) => Outcome::Failure(
                "timeout",
                format!("SSE of {events} events took over {limit:?}"),
            ),
        };
        conn = None;
        ctx.tally.record("sse", since, outcome);
        tokio::time::sleep(ERROR_PAUSE).await;
    }
}

async fn sse_stream(ctx: &Ctx, conn: &mut Option<Conn>, events: u64) -> Result<(), Outcome> {
    let path = format!("/events?n={events}&ms={SSE_INTERVAL_MS}");
    let response = send(ctx, conn, Method::GET, &path, Empty::new().boxed()).await?;
    let mut body = response.into_body();
    let (mut pending, mut seen) = (Vec::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Outcome::Clean(
                Clean::BodyCut,
                format!("after {seen} of {events} events: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            check_event(&event[..end], seen)?;
            seen += 1;
            ctx.tally.ok("sse_event", event.len() as u64);
        }
    }
    if seen != events || !pending.is_empty() {
        return Err(Outcome::WrongBytes(format!(
            "SSE ended cleanly after {seen} of {events} events and {} stray bytes",
            pending.len()
        )));
    }
    Ok(())
}

/// Event `index` must read exactly `id: I` and `data: I HEX`, HEX the pattern word at I.
fn check_event(event: &[u8], index: u64) -> Result<(), Outcome> {
    let word = pattern::hex(&pattern::chunk(index * 8, 8));
    let expected = format!("id: {index}\ndata: {index} {word}");
    if event != expected.as_bytes() {
        let got = String::from_utf8_lossy(&event[..event.len().min(100)]).into_owned();
        return Err(Outcome::WrongBytes(format!(
            "SSE event {index}: got {got:?}, expected {expected:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_must_be_exact_and_in_order() {
        let word = pattern::hex(&pattern::chunk(8, 8));
        let event = format!("id: 1\ndata: 1 {word}");
        assert!(check_event(event.as_bytes(), 1).is_ok());
        assert!(check_event(event.as_bytes(), 2).is_err());
        assert!(check_event(event.replace("data: ", "data:").as_bytes(), 1).is_err());
    }
}
