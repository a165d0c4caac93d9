//! What the traffic saw: successes, clean errors by kind, failures, and the fault windows
//! that decide whether an error was expected.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Failure details kept for the report; the counts go on past this.
const MAX_DETAILS: usize = 40;

/// Examples kept of each clean error kind under each fault, for the JSON report.
const MAX_EXAMPLES: usize = 3;

/// One fault the soak injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// `kill -9` of the tunnel, then a new tunnel with the same `--name`.
    TunnelKill,
    /// SIGTERM to the gateway (it drains, then exits), then a new one on the same port.
    GatewayTerm,
    /// `kill -9` of the gateway, then a new one on the same port.
    GatewayKill,
    /// Nothing: a control cycle (`--faults none`), where any error is a failure.
    None,
}

impl Fault {
    /// Every kind, in the order a round of the schedule starts from.
    pub(crate) const ALL: [Fault; 3] = [Fault::TunnelKill, Fault::GatewayTerm, Fault::GatewayKill];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::TunnelKill => "tunnel_kill9",
            Fault::GatewayTerm => "gateway_sigterm",
            Fault::GatewayKill => "gateway_kill9",
            Fault::None => "none",
        }
    }

    /// The kind called `name`, as the report spells it.
    pub(crate) fn parse(name: &str) -> Option<Fault> {
        Fault::ALL
            .into_iter()
            .chain([Fault::None])
            .find(|f| f.name() == name)
    }

    fn stops_gateway(self) -> bool {
        matches!(self, Fault::GatewayTerm | Fault::GatewayKill)
    }
}

/// A clean error: one of the ways the brief allows a request to fail during a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Clean {
    /// The gateway answered 502: the tunnel is offline or died mid-call.
    Http502,
    /// The gateway answered 503: the tunnel is busy.
    Http503,
    /// The gateway answered 404 for our name: a new gateway before the tunnel re-registered.
    Http404,
    /// Connection refused: no gateway listens.
    Refused,
    /// The connection was reset or closed before the response (head) arrived.
    Closed,
    /// A response body that ended early with an error (not a short body that looks whole).
    BodyCut,
    /// A WebSocket closed by the gateway with 1001 (going away).
    WsGoingAway,
    /// A WebSocket whose connection dropped without a close handshake.
    WsDropped,
    /// We closed a WebSocket with 1000 and it ended without the gateway's answering close
    /// frame (docs/reliability.md, finding 2; fixed).
    WsCloseUnanswered,
    /// A WebSocket handshake answered 101 without `Connection: upgrade`: a known, not yet
    /// understood bug (docs/reliability.md, finding 4), reported but not failed on unless
    /// `--strict`.
    WsHandshakeUnupgraded,
}

impl Clean {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Clean::Http502 => "http_502",
            Clean::Http503 => "http_503",
            Clean::Http404 => "http_404",
            Clean::Refused => "connection_refused",
            Clean::Closed => "connection_closed",
            Clean::BodyCut => "body_cut",
            Clean::WsGoingAway => "ws_close_1001",
            Clean::WsDropped => "ws_dropped",
            Clean::WsCloseUnanswered => "ws_close_unanswered",
            Clean::WsHandshakeUnupgraded => "ws_handshake_unupgraded",
        }
    }

    /// Whether this is a known bug, counted apart when no fault explains it (`--strict`
    /// fails on it anyway): the 101 without `Connection: upgrade` seen about once in
    /// 15,000 sockets (docs/reliability.md, finding 4). Fails the run once it is fixed.
    fn known_issue(self) -> bool {
        self == Clean::WsHandshakeUnupgraded
    }

    /// Whether `fault` explains this error. Only a gateway that is down or new explains
    /// a refused connection or a 404 for the tunnel's own name; anything explains a cut.
    fn explained_by(self, fault: Fault) -> bool {
        match self {
            Clean::Refused | Clean::Http404 => fault.stops_gateway(),
            _ => true,
        }
    }
}

/// How one operation ended badly.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A clean error; it still fails the run when no fault overlaps the operation.
    Clean(Clean, String),
    /// Wrong bytes: a body, event or message that differs from what was sent or served.
    WrongBytes(String),
    /// Anything else: a bad status, a malformed answer, a timeout (a hang).
    Failure(&'static str, String),
}

impl Outcome {
    /// The same outcome, its detail prefixed with where it happened.
    pub(crate) fn context(self, at: &str) -> Outcome {
        match self {
            Outcome::Clean(kind, d) => Outcome::Clean(kind, format!("{at}: {d}")),
            Outcome::WrongBytes(d) => Outcome::WrongBytes(format!("{at}: {d}")),
            Outcome::Failure(kind, d) => Outcome::Failure(kind, format!("{at}: {d}")),
        }
    }
}

/// The period from a fault until traffic is healthy again; open while `end` is None.
struct Window {
    fault: Fault,
    start: Instant,
    end: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    ok: BTreeMap<&'static str, u64>,
    bytes: u64,
    errors: BTreeMap<&'static str, u64>,
    /// The same errors by the fault that explains them: "fault kind".
    by_fault: BTreeMap<String, u64>,
    examples: BTreeMap<String, Vec<String>>,
    known: BTreeMap<&'static str, u64>,
    failures: BTreeMap<String, u64>,
    wrong_bytes: u64,
    details: Vec<String>,
    windows: Vec<Window>,
}

/// Shared by every worker of a run.
pub(crate) struct Tally {
    inner: Mutex<Inner>,
    started: Instant,
    /// Known issues fail the run too.
    strict: bool,
}

/// A copy of the counts for the report.
pub(crate) struct Counts {
    pub(crate) ok: BTreeMap<&'static str, u64>,
    pub(crate) bytes: u64,
    pub(crate) errors: BTreeMap<&'static str, u64>,
    pub(crate) by_fault: BTreeMap<String, u64>,
    pub(crate) examples: BTreeMap<String, Vec<String>>,
    /// Known issues outside any fault window: reported, not failures.
    pub(crate) known: BTreeMap<&'static str, u64>,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) wrong_bytes: u64,
    pub(crate) details: Vec<String>,
}

impl Tally {
    pub(crate) fn new(strict: bool) -> Self {
        Tally {
            inner: Mutex::default(),
            started: Instant::now(),
            strict,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A worker that panicked mid-update leaves counts that are still worth reporting.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one success of `what` that moved `bytes` checked bytes.
    pub(crate) fn ok(&self, what: &'static str, bytes: u64) {
        let mut inner = self.lock();
        *inner.ok.entry(what).or_default() += 1;
        inner.bytes += bytes;
    }

    /// Records how an operation (or the connection it ran on) that began at `since`
    /// failed: a clean error counts by kind when a fault window overlaps it, anything
    /// else is a failure.
    pub(crate) fn record(&self, what: &str, since: Instant, outcome: Outcome) {
        let now = Instant::now();
        let at = now.duration_since(self.started).as_secs_f64();
        let mut inner = self.lock();
        let (key, detail) = match outcome {
            Outcome::Clean(kind, detail) => {
                // The latest fault overlapping the operation that explains the error.
                let explained = inner.windows.iter().rev().find(|w| {
                    w.start <= now
                        && w.end.is_none_or(|end| end >= since)
                        && kind.explained_by(w.fault)
                });
                if let Some(window) = explained {
                    let key = format!("{} {}", window.fault.name(), kind.name());
                    let examples = inner.examples.entry(key.clone()).or_default();
                    if examples.len() < MAX_EXAMPLES {
                        examples.push(format!("t={at:.1}s {what}: {detail}"));
                    }
                    *inner.by_fault.entry(key).or_default() += 1;
                    *inner.errors.entry(kind.name()).or_default() += 1;
                    return;
                }
                if kind.known_issue() && !self.strict {
                    *inner.known.entry(kind.name()).or_default() += 1;
                    let examples = inner.examples.entry(format!("known {}", kind.name()));
                    let examples = examples.or_default();
                    if examples.len() < MAX_EXAMPLES {
                        examples.push(format!("t={at:.1}s {what}: {detail}"));
                    }
                    return;
                }
                (format!("{}_outside_fault", kind.name()), detail)
            }
            Outcome::WrongBytes(detail) => {
                inner.wrong_bytes += 1;
                ("wrong_bytes".to_owned(), detail)
            }
            Outcome::Failure(kind, detail) => (kind.to_owned(), detail),
        };
        *inner.failures.entry(key.clone()).or_default() += 1;
        if inner.details.len() < MAX_DETAILS {
            inner
                .details
                .push(format!("t={at:.1}s {what}: {key}: {detail}"));
        }
    }

    /// Records a failure of the harness's own checks (a leak, a restart that failed).
    pub(crate) fn fail(&self, kind: &'static str, detail: String) {
        self.record("soak", Instant::now(), Outcome::Failure(kind, detail));
    }

    /// Opens a fault window; errors overlapping it are expected.
    pub(crate) fn open_window(&self, fault: Fault) {
        self.lock().windows.push(Window {
            fault,
            start: Instant::now(),
            end: None,
        });
    }

    /// Closes the open window: traffic is healthy again.
    pub(crate) fn close_window(&self) {
        if let Some(window) = self
            .lock()
            .windows
            .iter_mut()
            .rev()
            .find(|w| w.end.is_none())
        {
            window.end = Some(Instant::now());
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        let inner = self.lock();
        Counts {
            ok: inner.ok.clone(),
            bytes: inner.bytes,
            errors: inner.errors.clone(),
            by_fault: inner.by_fault.clone(),
            examples: inner.examples.clone(),
            known: inner.known.clone(),
            failures: inner.failures.clone(),
            wrong_bytes: inner.wrong_bytes,
            details: inner.details.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_count_only_inside_a_fault_that_explains_them() {
        let tally = Tally::new(false);
        let before = Instant::now();
        tally.record("get", before, Outcome::Clean(Clean::Http502, "x".into()));
        tally.open_window(Fault::TunnelKill);
        tally.record("get", before, Outcome::Clean(Clean::Http502, "x".into()));
        tally.record("get", before, Outcome::Clean(Clean::Refused, "x".into()));
        tally.close_window();
        let counts = tally.counts();
        assert_eq!(counts.errors.get("http_502"), Some(&1));
        assert_eq!(counts.failures.get("http_502_outside_fault"), Some(&1));
        assert_eq!(
            counts.failures.get("connection_refused_outside_fault"),
            Some(&1)
        );
        let after = Instant::now();
        tally.record("get", after, Outcome::Clean(Clean::BodyCut, "x".into()));
        assert_eq!(
            tally.counts().failures.get("body_cut_outside_fault"),
            Some(&1)
        );
        // A known issue is counted apart, unless strict; a fixed one fails again.
        let unupgraded = || Outcome::Clean(Clean::WsHandshakeUnupgraded, "x".into());
        tally.record("ws", after, unupgraded());
        assert_eq!(
            tally.counts().known.get("ws_handshake_unupgraded"),
            Some(&1)
        );
        let strict = Tally::new(true);
        strict.record("ws", after, unupgraded());
        let failures = strict.counts().failures;
        assert_eq!(
            failures.get("ws_handshake_unupgraded_outside_fault"),
            Some(&1)
        );
        let unanswered = Outcome::Clean(Clean::WsCloseUnanswered, "x".into());
        tally.record("ws", after, unanswered);
        let failures = tally.counts().failures;
        assert_eq!(failures.get("ws_close_unanswered_outside_fault"), Some(&1));
    }
}
