//! The wire under the fuzzer: framing, the captured register stream, RPC messages built field by field, and reading the gateway's answers.

use capnp::traits::HasTypeId;
use capnp_rpc::rpc_capnp::{self, cap_descriptor, message, message_target, payload, return_};
use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::capstan_capnp::{fetcher, gateway, register_result, registration};
use capstan::transport::{reader_options, rpc_system};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::compat::TokioAsyncReadCompatExt;

/// The question id of the `Bootstrap` that ends every script: its answer proves the
/// gateway read, and survived, everything before it. Scripts use small ids, and this
/// one is out of their way.
pub(crate) const PROBE: u32 = 0xffff_fff0;

/// The wire form of one message: segment count - 1, sizes, padding to a word, words.
pub(crate) fn frame(segments: &[Vec<u64>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(segments.len() as u32).wrapping_sub(1).to_le_bytes());
    for segment in segments {
        out.extend_from_slice(&(segment.len() as u32).to_le_bytes());
    }
    if segments.len() % 2 == 0 {
        out.extend_from_slice(&[0; 4]);
    }
    for word in segments.iter().flatten() {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out
}

/// Reads one framed message off `reader`, as raw bytes; `None` at a clean end of stream.
async fn read_frame(reader: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut first = [0; 4];
    match reader.read_exact(&mut first).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let count = u32::from_le_bytes(first) as usize + 1;
    let mut table = vec![0; 4 * count + if count % 2 == 0 { 4 } else { 0 }];
    reader.read_exact(&mut table).await?;
    let words: usize = table
        .chunks_exact(4)
        .take(count)
        .map(|size| u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize)
        .sum();
    let mut out = first.to_vec();
    out.extend_from_slice(&table);
    let start = out.len();
    out.resize(start + 8 * words, 0);
    reader.read_exact(&mut out[start..]).await?;
    Ok(Some(out))
}

/// A tunnel that answers nothing; the captured stream only needs its capability.
struct Idle;

impl fetcher::Server for Idle {}

/// The bytes a real tunnel writes first: `Bootstrap`, then `register(name, "", fetcher)`
/// pipelined on its answer. Captured from a real `RpcSystem`, so the fuzzer starts from
/// exactly what the gateway sees in production.
pub(crate) fn capture_register_stream(name: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let fetcher: fetcher::Client = capnp_rpc::new_client(Idle);
        let mut system = rpc_system(ours.compat(), Side::Client, Some(fetcher.clone().client));
        let gateway: gateway::Client = system.bootstrap(Side::Server);
        let mut request = gateway.register_request();
        request.get().set_name(name);
        request.get().set_token("");
        request.get().set_fetcher(fetcher);
        // Held until both messages are read: dropping the call would cancel it.
        let _pending = request.send();
        tokio::task::spawn_local(system);
        let mut stream = Vec::new();
        for _ in 0..2 {
            let message = read_frame(&mut theirs).await.unwrap();
            stream.extend(message.expect("the client writes two messages"));
        }
        stream
    })
}

// ---- Reading what the gateway sent. ----

/// True when `matches` holds for one of the whole RPC messages in `received`.
fn any_message(received: &[u8], matches: impl Fn(message::Reader<'_>) -> bool) -> bool {
    let mut rest = received;
    while let Ok(frame) = capnp::serialize::read_message(&mut rest, reader_options()) {
        if let Ok(root) = frame.get_root::<message::Reader<'_>>() {
            if matches(root) {
                return true;
            }
        }
    }
    false
}

/// True when the gateway answered a `register` with `ok`: the peer then is a tunnel,
/// which lives until its heartbeat fails, not a connection that must close at the
/// register timeout.
pub(crate) fn registered(received: &[u8]) -> bool {
    any_message(received, |root| {
        let Ok(message::Return(Ok(answer))) = root.which() else {
            return false;
        };
        let Ok(return_::Results(Ok(results))) = answer.which() else {
            return false;
        };
        let result = results
            .get_content()
            .get_as::<gateway::register_results::Reader<'_>>()
            .and_then(|results| results.get_result());
        matches!(result.map(|r| r.which()), Ok(Ok(register_result::Ok(_))))
    })
}

/// True when the gateway has called the peer: its heartbeat pings a registered tunnel.
pub(crate) fn called(received: &[u8]) -> bool {
    any_message(received, |root| {
        matches!(root.which(), Ok(message::Call(_)))
    })
}

/// True when the gateway answered question `id`.
pub(crate) fn answered(received: &[u8], id: u32) -> bool {
    any_message(
        received,
        |root| matches!(root.which(), Ok(message::Return(Ok(answer))) if answer.get_answer_id() == id),
    )
}

// ---- RPC messages built field by field. ----

/// An id that refers to something: mostly one the connection has (the gateway's ping in
/// flight is its question 0; its bootstrap and `registration` are exports 0 and 1), so
/// that a script gets past its first message more often than not.
fn id() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 0u32..2, 3 => 0u32..8, 1 => any::<u32>()]
}

/// The id of a new question: the tunnel's own first two (bootstrap, register) are in use.
fn fresh() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 2u32..10, 1 => any::<u32>()]
}

/// A step of a promised answer's transform.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Noop,
    Field(u16),
}

fn transform() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![Just(Op::Noop), (0u16..4).prop_map(Op::Field)],
        0..3,
    )
}

#[derive(Debug, Clone)]
pub(crate) enum Target {
    Imported(u32),
    Promised(u32, Vec<Op>),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        id().prop_map(Target::Imported),
        (id(), transform()).prop_map(|(q, ops)| Target::Promised(q, ops)),
    ]
}

/// A capability in a payload's cap table. The table is read whether or not the content
/// points into it, so every descriptor is imported, looked up or refused.
#[derive(Debug, Clone)]
pub(crate) enum Cap {
    None,
    SenderHosted(u32),
    SenderPromise(u32),
    ReceiverHosted(u32),
    ReceiverAnswer(u32, Vec<Op>),
    ThirdPartyHosted(u32),
}

fn caps() -> impl Strategy<Value = Vec<Cap>> {
    let cap = prop_oneof![
        Just(Cap::None),
        id().prop_map(Cap::SenderHosted),
        id().prop_map(Cap::SenderPromise),
        id().prop_map(Cap::ReceiverHosted),
        (id(), transform()).prop_map(|(q, ops)| Cap::ReceiverAnswer(q, ops)),
        id().prop_map(Cap::ThirdPartyHosted),
    ];
    prop::collection::vec(cap, 0..3)
}

#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Results(Vec<Cap>),
    Exception,
    Canceled,
    SentElsewhere,
    TakeFrom(u32),
    FromThirdParty,
}

#[derive(Debug, Clone)]
pub(crate) enum Context {
    SenderLoopback(u32),
    ReceiverLoopback(u32),
    Accept,
    Provide(u32),
}

/// The interface a call names: the gateway's two, the tunnel's, or none of them.
#[derive(Debug, Clone)]
pub(crate) enum Interface {
    Gateway,
    Registration,
    Fetcher,
    Other(u64),
}

impl Interface {
    fn id(&self) -> u64 {
        match self {
            Interface::Gateway => gateway::Client::TYPE_ID,
            Interface::Registration => registration::Client::TYPE_ID,
            Interface::Fetcher => fetcher::Client::TYPE_ID,
            Interface::Other(id) => *id,
        }
    }
}

/// One RPC message from the peer, valid in form, arbitrary in what it refers to.
#[derive(Debug, Clone)]
pub(crate) enum Rpc {
    /// Says the peer could not handle the gateway's question `0` (a ping).
    Unimplemented(u32),
    Abort,
    Bootstrap(u32),
    Call {
        question: u32,
        target: Target,
        interface: Interface,
        method: u16,
        /// For `register`: the name asked for; its `fetcher` stays null.
        name: String,
        caps: Vec<Cap>,
        results_to: u8,
    },
    Return {
        answer: u32,
        release_param_caps: bool,
        no_finish_needed: bool,
        kind: Answer,
    },
    Finish {
        question: u32,
        release_result_caps: bool,
    },
    Resolve {
        promise: u32,
        cap: Option<Cap>,
    },
    Release {
        id: u32,
        count: u32,
    },
    Disembargo {
        target: Target,
        context: Context,
    },
    /// Three-party messages, which a two-party gateway does not implement.
    Provide(u32),
    Accept(u32),
    Join(u32),
}

pub(crate) fn rpc() -> impl Strategy<Value = Rpc> {
    // Mostly methods the gateway has, so that calls reach its code, not only the checks
    // in front of it.
    let interface = prop_oneof![
        3 => Just(Interface::Gateway),
        2 => Just(Interface::Registration),
        1 => Just(Interface::Fetcher),
        1 => any::<u64>().prop_map(Interface::Other),
    ];
    let method = prop_oneof![3 => Just(0u16), 1 => 1u16..4];
    let name = prop::sample::select(&["", "fuzzed", "bystander", "Not A Label"][..]);
    let results_to = prop_oneof![4 => Just(0u8), 1 => 1u8..3];
    let call = (
        fresh(),
        target(),
        interface,
        method,
        name,
        caps(),
        results_to,
    )
        .prop_map(
            |(question, target, interface, method, name, caps, results_to)| Rpc::Call {
                question,
                target,
                interface,
                method,
                name: name.to_owned(),
                caps,
                results_to,
            },
        );
    let answer = prop_oneof![
        caps().prop_map(Answer::Results),
        Just(Answer::Exception),
        Just(Answer::Canceled),
        Just(Answer::SentElsewhere),
        id().prop_map(Answer::TakeFrom),
        Just(Answer::FromThirdParty),
    ];
    let ret = (id(), any::<bool>(), any::<bool>(), answer).prop_map(
        |(answer, release_param_caps, no_finish_needed, kind)| Rpc::Return {
            answer,
            release_param_caps,
            no_finish_needed,
            kind,
        },
    );
    let cap = prop_oneof![
        Just(Cap::None),
        id().prop_map(Cap::SenderHosted),
        id().prop_map(Cap::ReceiverHosted),
        (id(), transform()).prop_map(|(q, ops)| Cap::ReceiverAnswer(q, ops)),
    ];
    let context = prop_oneof![
        id().prop_map(Context::SenderLoopback),
        id().prop_map(Context::ReceiverLoopback),
        Just(Context::Accept),
        id().prop_map(Context::Provide),
    ];
    prop_oneof![
        1 => id().prop_map(Rpc::Unimplemented),
        1 => Just(Rpc::Abort),
        1 => fresh().prop_map(Rpc::Bootstrap),
        6 => call,
        4 => ret,
        3 => (id(), any::<bool>()).prop_map(|(question, release_result_caps)| Rpc::Finish {
            question,
            release_result_caps,
        }),
        2 => (id(), prop::option::of(cap)).prop_map(|(promise, cap)| Rpc::Resolve { promise, cap }),
        3 => (id(), prop_oneof![0u32..3, any::<u32>()])
            .prop_map(|(id, count)| Rpc::Release { id, count }),
        2 => (target(), context).prop_map(|(target, context)| Rpc::Disembargo { target, context }),
        1 => fresh().prop_map(Rpc::Provide),
        1 => fresh().prop_map(Rpc::Accept),
        1 => fresh().prop_map(Rpc::Join),
    ]
}

fn set_transform(mut answer: rpc_capnp::promised_answer::Builder<'_>, question: u32, ops: &[Op]) {
    answer.set_question_id(question);
    let mut list = answer.init_transform(ops.len() as u32);
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Noop => list.reborrow().get(i as u32).set_noop(()),
            Op::Field(field) => list.reborrow().get(i as u32).set_get_pointer_field(*field),
        }
    }
}

fn set_target(mut builder: message_target::Builder<'_>, target: &Target) {
    match target {
        Target::Imported(id) => builder.set_imported_cap(*id),
        Target::Promised(question, ops) => {
            set_transform(builder.init_promised_answer(), *question, ops);
        }
    }
}

fn set_cap(mut builder: cap_descriptor::Builder<'_>, cap: &Cap) {
    match cap {
        Cap::None => builder.set_none(()),
        Cap::SenderHosted(id) => builder.set_sender_hosted(*id),
        Cap::SenderPromise(id) => builder.set_sender_promise(*id),
        Cap::ReceiverHosted(id) => builder.set_receiver_hosted(*id),
        Cap::ReceiverAnswer(question, ops) => {
            set_transform(builder.init_receiver_answer(), *question, ops);
        }
        Cap::ThirdPartyHosted(id) => {
            let mut third = builder.init_third_party_hosted();
            third.set_vine_id(*id);
        }
    }
}

fn set_caps(builder: payload::Builder<'_>, caps: &[Cap]) {
    let mut table = builder.init_cap_table(caps.len() as u32);
    for (i, cap) in caps.iter().enumerate() {
        set_cap(table.reborrow().get(i as u32), cap);
    }
}

fn set_exception(mut builder: rpc_capnp::exception::Builder<'_>) {
    builder.set_reason("fuzzed");
    builder.set_type(rpc_capnp::exception::Type::Failed);
}

/// The framed bytes of `rpc`.
pub(crate) fn encode(rpc: &Rpc) -> Vec<u8> {
    let mut out = capnp::message::Builder::new_default();
    let root = out.init_root::<message::Builder<'_>>();
    match rpc {
        Rpc::Unimplemented(question) => {
            let mut call = root.init_unimplemented().init_call();
            call.set_question_id(*question);
            call.reborrow().init_target().set_imported_cap(0);
            call.set_interface_id(fetcher::Client::TYPE_ID);
            call.set_method_id(2);
        }
        Rpc::Abort => set_exception(root.init_abort()),
        Rpc::Bootstrap(question) => root.init_bootstrap().set_question_id(*question),
        Rpc::Call {
            question,
            target,
            interface,
            method,
            name,
            caps,
            results_to,
        } => {
            let mut call = root.init_call();
            call.set_question_id(*question);
            set_target(call.reborrow().init_target(), target);
            call.set_interface_id(interface.id());
            call.set_method_id(*method);
            let mut params = call.reborrow().init_params();
            if matches!(interface, Interface::Gateway) && *method == 0 {
                let mut register = params
                    .reborrow()
                    .init_content()
                    .init_as::<gateway::register_params::Builder<'_>>();
                register.set_name(name.as_str());
                register.set_token("");
            }
            set_caps(params, caps);
            let mut to = call.init_send_results_to();
            match results_to {
                0 => to.set_caller(()),
                1 => to.set_yourself(()),
                _ => {
                    to.init_third_party();
                }
            }
        }
        Rpc::Return {
            answer,
            release_param_caps,
            no_finish_needed,
            kind,
        } => {
            let mut ret = root.init_return();
            ret.set_answer_id(*answer);
            ret.set_release_param_caps(*release_param_caps);
            ret.set_no_finish_needed(*no_finish_needed);
            match kind {
                Answer::Results(caps) => set_caps(ret.init_results(), caps),
                Answer::Exception => set_exception(ret.init_exception()),
                Answer::Canceled => ret.set_canceled(()),
                Answer::SentElsewhere => ret.set_results_sent_elsewhere(()),
                Answer::TakeFrom(question) => ret.set_take_from_other_question(*question),
                Answer::FromThirdParty => {
                    ret.init_accept_from_third_party();
                }
            }
        }
        Rpc::Finish {
            question,
            release_result_caps,
        } => {
            let mut finish = root.init_finish();
            finish.set_question_id(*question);
            finish.set_release_result_caps(*release_result_caps);
        }
        Rpc::Resolve { promise, cap } => {
            let mut resolve = root.init_resolve();
            resolve.set_promise_id(*promise);
            match cap {
                Some(cap) => set_cap(resolve.init_cap(), cap),
                None => set_exception(resolve.init_exception()),
            }
        }
        Rpc::Release { id, count } => {
            let mut release = root.init_release();
            release.set_id(*id);
            release.set_reference_count(*count);
        }
        Rpc::Disembargo { target, context } => {
            let mut disembargo = root.init_disembargo();
            set_target(disembargo.reborrow().init_target(), target);
            let mut to = disembargo.init_context();
            match context {
                Context::SenderLoopback(id) => to.set_sender_loopback(*id),
                Context::ReceiverLoopback(id) => to.set_receiver_loopback(*id),
                Context::Accept => to.set_accept(()),
                Context::Provide(id) => to.set_provide(*id),
            }
        }
        Rpc::Provide(question) => {
            let mut provide = root.init_provide();
            provide.set_question_id(*question);
            set_target(provide.init_target(), &Target::Imported(0));
        }
        Rpc::Accept(question) => root.init_accept().set_question_id(*question),
        Rpc::Join(question) => {
            let mut join = root.init_join();
            join.set_question_id(*question);
            set_target(join.init_target(), &Target::Imported(0));
        }
    }
    capnp::serialize::write_message_to_words(&out)
}
