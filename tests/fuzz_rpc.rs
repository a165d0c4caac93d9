//! The gateway's raw RPC port fed random bytes, random framing, mutated register streams and RPC message scripts.

mod common;
#[path = "fuzz_rpc/wire.rs"]
mod wire;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use capstan_client::TunnelThread;
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::{answered, called, capture_register_stream, encode, frame, registered, Rpc, PROBE};

/// Batches per run unless `PROPTEST_CASES` says otherwise; each batch is up to
/// `MAX_BATCH` connections at once. About 5 s in a debug build on two cores, which is
/// what CI runs. docs/fuzzing.md has the command for a long run.
const CI_CASES: u32 = 64;

/// Connections fuzzed at once: each mostly waits for the register timeout, so running
/// several together costs little more than one.
const MAX_BATCH: usize = 6;

/// Short enough that a batch of connections that never register ends in a fraction of a
/// second; the check runs at heartbeat ticks, so it fires within 50 ms after.
const REGISTER_TIMEOUT: Duration = Duration::from_millis(200);
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// How long the gateway may take to close a connection it must close: the register
/// timeout, a heartbeat's timeout (2 s) for one that did register, and a wide margin for
/// a loaded 2-core machine. Past this the connection counts as hung.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// The name the captured stream registers.
const SEED_NAME: &str = "fuzzed";

/// The run's configuration (see `common::fuzz_config`).
fn config() -> ProptestConfig {
    ProptestConfig {
        // Each shrink step runs a batch against the gateway; bound the search.
        max_shrink_iters: 256,
        ..fuzz_config(CI_CASES)
    }
}

// ---- Inputs. ----

/// What one fuzzing connection writes.
#[derive(Debug, Clone)]
enum Payload {
    /// (a) Bytes with no framing at all.
    Bytes(Vec<u8>),
    /// (b) Well-framed messages (segments of words), with random words.
    Framed(Vec<Vec<Vec<u64>>>),
    /// (c) A well-framed message cut short at `cut`.
    Truncated(Vec<Vec<u64>>, Index),
    /// (c) A segment table promising segments (count - 1, then sizes) that never come.
    Promise {
        count_minus_one: u32,
        sizes: Vec<u32>,
        words: Vec<u64>,
    },
    /// (d) The captured `Bootstrap` + `register` stream, mutated.
    Mutated(Vec<Mutation>),
    /// Well-formed RPC messages with arbitrary ids and references, sent by a registered
    /// tunnel once the gateway has pinged it, then a `Bootstrap` as a probe.
    Script(Vec<Rpc>),
}

/// One change to the captured stream.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    Replace(Index, u8),
    Truncate(Index),
}

/// How the fuzzing peer ends after writing.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Closes the socket at once.
    Close,
    /// Shuts down its write side and reads until the gateway closes.
    HalfClose,
    /// Stays open and reads until the gateway closes it, registers a name, or answers
    /// the script's probe.
    KeepOpen,
}

#[derive(Debug, Clone)]
struct Case {
    payload: Payload,
    ending: Ending,
}

/// The captured streams the payloads start from.
struct Seeds {
    /// Registers `fuzzed`; what mutations start from.
    named: Vec<u8>,
    /// Registers a name the gateway picks, so that every script's tunnel registers.
    unnamed: Vec<u8>,
}

impl Payload {
    /// The bytes to write first, and for a script, what to write once the gateway pinged.
    fn bytes(&self, seeds: &Seeds) -> (Vec<u8>, Option<Vec<u8>>) {
        let first = match self {
            Payload::Script(script) => {
                let mut then: Vec<u8> = script.iter().flat_map(encode).collect();
                then.extend(encode(&Rpc::Bootstrap(PROBE)));
                return (seeds.unnamed.clone(), Some(then));
            }
            Payload::Bytes(bytes) => bytes.clone(),
            Payload::Framed(messages) => messages.iter().flat_map(|m| frame(m)).collect(),
            Payload::Truncated(segments, cut) => {
                let mut bytes = frame(segments);
                bytes.truncate(cut.index(bytes.len()));
                bytes
            }
            Payload::Promise {
                count_minus_one,
                sizes,
                words,
            } => {
                let mut bytes = count_minus_one.to_le_bytes().to_vec();
                sizes
                    .iter()
                    .for_each(|s| bytes.extend_from_slice(&s.to_le_bytes()));
                words
                    .iter()
                    .for_each(|w| bytes.extend_from_slice(&w.to_le_bytes()));
                bytes
            }
            Payload::Mutated(mutations) => {
                let mut bytes = seeds.named.clone();
                for mutation in mutations {
                    let len = bytes.len();
                    if len == 0 {
                        break;
                    }
                    match mutation {
                        Mutation::FlipBit(at, bit) => bytes[at.index(len)] ^= 1 << bit,
                        Mutation::Replace(at, byte) => bytes[at.index(len)] = *byte,
                        Mutation::Truncate(at) => bytes.truncate(at.index(len)),
                    }
                }
                bytes
            }
        };
        (first, None)
    }
}

/// Words that look like what a message holds, not only noise: small numbers, and struct,
/// list, far and capability pointers with small offsets and sizes, so that the reader
/// follows them into the message rather than failing on the first word.
fn word() -> impl Strategy<Value = u64> {
    let offset = |off: i32| (u64::from(off as u32) << 2) & 0xffff_fffc;
    prop_oneof![
        any::<u64>(),
        0u64..16,
        (-4i32..8, 0u64..4, 0u64..4)
            .prop_map(move |(off, data, ptrs)| offset(off) | data << 32 | ptrs << 48),
        (-4i32..8, 0u64..8, 0u64..16)
            .prop_map(move |(off, size, count)| 1 | offset(off) | size << 32 | count << 35),
        (0u64..4, 0u64..4, any::<bool>())
            .prop_map(|(off, seg, double)| 2 | u64::from(double) << 2 | off << 3 | seg << 32),
        (0u64..4).prop_map(|index| 3 | index << 32),
    ]
}

fn message() -> impl Strategy<Value = Vec<Vec<u64>>> {
    prop::collection::vec(prop::collection::vec(word(), 0..24), 1..5)
}

fn payload() -> impl Strategy<Value = Payload> {
    let mutation = prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        3 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ];
    let size = prop_oneof![0u32..64, any::<u32>(), Just(4 << 20), Just((4 << 20) + 1)];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(Payload::Bytes),
        2 => prop::collection::vec(message(), 1..4).prop_map(Payload::Framed),
        1 => (message(), any::<Index>()).prop_map(|(m, cut)| Payload::Truncated(m, cut)),
        1 => (
            prop_oneof![0u32..4, 0u32..600, any::<u32>()],
            prop::collection::vec(size, 0..6),
            prop::collection::vec(any::<u64>(), 0..8),
        )
            .prop_map(|(count_minus_one, sizes, words)| Payload::Promise {
                count_minus_one,
                sizes,
                words,
            }),
        4 => prop::collection::vec(mutation, 0..6).prop_map(Payload::Mutated),
        4 => prop::collection::vec(wire::rpc(), 1..8).prop_map(Payload::Script),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let ending = prop_oneof![
        Just(Ending::Close),
        Just(Ending::HalfClose),
        Just(Ending::KeepOpen)
    ];
    (payload(), ending).prop_map(|(payload, ending)| Case { payload, ending })
}

// ---- Running cases. ----

/// Panics on the gateway's and the tunnel's threads. tokio catches a panic in a spawned
/// task and carries on, so a session task that panics would go unseen without this.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if matches!(thread.name(), Some("capstan-gateway" | "capstan-tunnel")) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// `bytes` as hex, for failure messages that name the exact input.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}"); // Writing to a String cannot fail.
        out
    })
}

/// What one connection writes, and how it ends.
struct Input {
    first: Vec<u8>,
    /// A script, written once the gateway has pinged the tunnel `first` registered.
    then: Option<Vec<u8>>,
    ending: Ending,
}

impl Input {
    fn new(case: &Case, seeds: &Seeds) -> Self {
        let (first, then) = case.payload.bytes(seeds);
        Self {
            first,
            then,
            ending: case.ending,
        }
    }

    /// The exact bytes, for a failure message.
    fn describe(&self) -> String {
        let mut out = format!(
            "{:?}, {} bytes: {}",
            self.ending,
            self.first.len(),
            hex(&self.first)
        );
        if let Some(then) = &self.then {
            let _ = write!(
                out,
                "; after the first ping, {} bytes: {}",
                then.len(),
                hex(then)
            );
        }
        out
    }
}

/// Reads until `done` holds for what the gateway sent, or the gateway closes the
/// connection (end of stream or a reset). Returns whether `done` held.
async fn read_until(
    stream: &mut TcpStream,
    received: &mut Vec<u8>,
    done: fn(&[u8]) -> bool,
) -> bool {
    loop {
        if done(received) {
            return true;
        }
        match stream.read_buf(received).await {
            Ok(0) | Err(_) => return done(received),
            Ok(_) => {}
        }
    }
}

fn never(_: &[u8]) -> bool {
    false
}

fn probe_answered(received: &[u8]) -> bool {
    answered(received, PROBE)
}

/// One fuzzing connection. Errs when the gateway keeps open a connection it must close,
/// or stops answering one it must keep.
async fn run_case(rpc: SocketAddr, input: &Input) -> Result<(), String> {
    let mut stream = TcpStream::connect(rpc)
        .await
        .map_err(|err| format!("connecting: {err}"))?;
    // The gateway may close before it has read everything: a failed write is one of the
    // outcomes under test, not a failure of the test.
    let _ = stream.write_all(&input.first).await;
    let mut received = Vec::new();
    if let Some(then) = &input.then {
        // A script's `Return`s are meant for real questions: the heartbeat's pings.
        match tokio::time::timeout(CLOSE_BOUND, read_until(&mut stream, &mut received, called))
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err("the gateway closed a registered tunnel".into()),
            Err(_) => return Err(format!("no ping within {CLOSE_BOUND:?} of registering")),
        }
        let _ = stream.write_all(then).await; // As above.
    }
    // A connection that registered is a tunnel, alive until its heartbeat fails; one that
    // runs a script has a probe to answer. Anything else must be closed.
    let done = match (input.ending, &input.then) {
        (Ending::Close, _) => return Ok(()),
        (Ending::HalfClose, _) => {
            let _ = stream.shutdown().await; // As above: the gateway may be gone already.
            never
        }
        (Ending::KeepOpen, None) => registered,
        (Ending::KeepOpen, Some(_)) => probe_answered,
    };
    match tokio::time::timeout(CLOSE_BOUND, read_until(&mut stream, &mut received, done)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "the gateway neither closed the connection nor answered for {CLOSE_BOUND:?} \
             (registered: {}); it had sent {} bytes",
            registered(&received),
            received.len()
        )),
    }
}

/// A gateway with short timeouts, and a healthy tunnel on it that must not notice the fuzzing.
struct Fixture {
    bystander: TunnelThread,
    gateway: TestGateway,
    _origin: TestOrigin,
    visitor: Visitor,
}

impl Fixture {
    async fn start() -> Self {
        count_panics();
        let mut options = fast_gateway_options();
        options.register_timeout = REGISTER_TIMEOUT;
        options.heartbeat_interval = HEARTBEAT_INTERVAL;
        let gateway = TestGateway::with_options(options);
        let origin = TestOrigin::start().await;
        let bystander = gateway.tunnel("bystander", origin.addr);
        let visitor = Visitor::new(gateway.addr());
        Self {
            bystander,
            gateway,
            _origin: origin,
            visitor,
        }
    }

    fn rpc(&self) -> SocketAddr {
        self.gateway
            .thread
            .rpc_addr()
            .expect("TestGateway has an RPC port")
    }

    /// Runs `cases` at once, then checks that the gateway let go of every connection and
    /// that the bystander still serves, on the connection it had. An error names the
    /// exact bytes of every connection in the batch.
    async fn check(&self, seeds: &Seeds, cases: &[Case]) -> Result<(), String> {
        let inputs: Vec<_> = cases.iter().map(|case| Input::new(case, seeds)).collect();
        self.run_batch(&inputs).await.map_err(|err| {
            let inputs: Vec<_> = inputs.iter().map(Input::describe).collect();
            format!("{err}\ninputs:\n{}", inputs.join("\n"))
        })
    }

    async fn run_batch(&self, inputs: &[Input]) -> Result<(), String> {
        let runs = inputs.iter().map(|input| run_case(self.rpc(), input));
        for (i, outcome) in futures::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            outcome.map_err(|err| format!("connection {i}: {err}"))?;
        }
        let sessions = &self.gateway.thread.counters().sessions;
        // Every fuzzing connection is closed on our side now: only the bystander's is left.
        tokio::time::timeout(CLOSE_BOUND, sessions.wait_for(|n| *n == 1))
            .await
            .map_err(|_| {
                format!(
                    "{} sessions still open {CLOSE_BOUND:?} after their peers closed",
                    sessions.get()
                )
            })?;
        let (status, _, body) =
            tokio::time::timeout(CLOSE_BOUND, self.visitor.get("bystander", "/cookies"))
                .await
                .map_err(|_| "the bystander did not answer".to_owned())?;
        if (status, &body[..]) != (http::StatusCode::OK, &b"cookies"[..]) {
            return Err(format!("the bystander answered {status} {body:?}"));
        }
        let registrations = *self.bystander.registrations().borrow();
        if registrations != 1 {
            return Err(format!(
                "the bystander lost its connection: {registrations} registrations"
            ));
        }
        // Taken, not read, so that shrinking blames each batch only for its own panics.
        match PANICS.swap(0, Ordering::SeqCst) {
            0 => Ok(()),
            panics => Err(format!(
                "{panics} panics on the gateway's or the tunnel's thread"
            )),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---- Tests. ----

fn seeds() -> Seeds {
    Seeds {
        named: capture_register_stream(SEED_NAME),
        unnamed: capture_register_stream(""),
    }
}

/// The seeds are worth mutating only if, unmutated, they register a name; and the probe
/// that ends a script gets its answer.
#[test]
fn the_captured_streams_register_and_the_probe_is_answered() {
    let seeds = seeds();
    let runtime = runtime();
    runtime.block_on(async {
        let fixture = Fixture::start().await;
        for seed in [&seeds.named, &seeds.unnamed] {
            let mut stream = TcpStream::connect(fixture.rpc()).await.unwrap();
            stream.write_all(seed).await.unwrap();
            let mut received = Vec::new();
            let done = within(
                "registration",
                read_until(&mut stream, &mut received, registered),
            );
            assert!(done.await, "no registration in {}", hex(&received));
            stream
                .write_all(&encode(&Rpc::Bootstrap(PROBE)))
                .await
                .unwrap();
            let done = within(
                "probe",
                read_until(&mut stream, &mut received, probe_answered),
            );
            assert!(done.await, "no answer to the probe in {}", hex(&received));
        }
        // Once its peer goes, so does each session.
        within(
            "sessions closed",
            fixture
                .gateway
                .thread
                .counters()
                .sessions
                .wait_for(|n| *n == 1),
        )
        .await;
    });
}

/// Batches of malformed connections, each closed within a bound, none affecting the
/// bystander tunnel.
#[test]
fn malformed_streams_cost_only_their_own_connection() {
    let seeds = seeds();
    let runtime = runtime();
    let fixture = runtime.block_on(Fixture::start());
    let mut runner = TestRunner::new(config());
    let batches = prop::collection::vec(case(), 1..=MAX_BATCH);
    let result = runner.run(&batches, |cases| {
        runtime
            .block_on(fixture.check(&seeds, &cases))
            .map_err(TestCaseError::fail)
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
