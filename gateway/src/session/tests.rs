//! A session's timers on paused time, over an in-memory pipe: the heartbeat, the grace
//! period, the register timeout, and the names one connection may hold.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::capstan_capnp::{fetcher, gateway, register_result, RegisterError};
use capstan::transport::rpc_system;
use tokio::time::sleep;
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::limit::IpSlot;
use crate::registry::Lookup;
use crate::{GatewayOptions, State};

/// The defaults that these tests pin down: ping every 2 s, 5 s to answer, 10 s to
/// register, 30 s of grace.
fn state() -> Rc<State> {
    with_tokens(&[])
}

fn with_tokens(tokens: &[&str]) -> Rc<State> {
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let options = GatewayOptions {
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        ..GatewayOptions::default()
    };
    Rc::new(State::new(options, addr))
}

/// A session on one end of a small pipe, and the gateway's bootstrap on the other.
fn connect(state: &Rc<State>, fetcher: &fetcher::Client) -> gateway::Client {
    // A small pipe, so that flow control is exercised as on a busy socket.
    let (ours, theirs) = tokio::io::duplex(4096);
    let slot = IpSlot::take(state, [127, 0, 0, 1].into()).unwrap();
    super::spawn(state, theirs.compat(), "test".into(), Rc::new(slot));
    let mut rpc = rpc_system(ours.compat(), Side::Client, Some(fetcher.clone().client));
    let gateway = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(rpc);
    gateway
}

async fn register(
    gateway: &gateway::Client,
    name: &str,
    fetcher: &fetcher::Client,
) -> Result<capstan::capstan_capnp::registration::Client, RegisterError> {
    register_with(gateway, name, "", fetcher).await
}

async fn register_with(
    gateway: &gateway::Client,
    name: &str,
    token: &str,
    fetcher: &fetcher::Client,
) -> Result<capstan::capstan_capnp::registration::Client, RegisterError> {
    let mut request = gateway.register_request();
    request.get().set_name(name);
    request.get().set_token(token);
    request.get().set_fetcher(fetcher.clone());
    let response = request.send().promise.await.unwrap();
    match response
        .get()
        .unwrap()
        .get_result()
        .unwrap()
        .which()
        .unwrap()
    {
        register_result::Ok(ok) => Ok(ok.get_registration().unwrap()),
        register_result::Error(error) => Err(error.get_code().unwrap()),
    }
}

/// Answers `ping` with `unimplemented`, which counts as alive.
struct Alive;
impl fetcher::Server for Alive {}

/// Never answers `ping`.
struct Mute;
impl fetcher::Server for Mute {
    async fn ping(
        self: Rc<Self>,
        _: fetcher::PingParams,
        _: fetcher::PingResults,
    ) -> Result<(), capnp::Error> {
        std::future::pending().await
    }
}

fn lookup(state: &State, name: &str) -> &'static str {
    match state.registry.borrow_mut().lookup(name) {
        Lookup::Live(_) => "live",
        Lookup::Held => "held",
        Lookup::Unknown => "unknown",
    }
}

/// Runs `test` on a `LocalSet`, as the gateway runs.
fn on_local_set(test: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, test);
}

#[test]
fn a_connection_that_registers_nothing_is_closed_after_the_register_timeout() {
    on_local_set(async {
        let state = state();
        let _gateway = connect(&state, &capnp_rpc::new_client(Alive));
        sleep(Duration::from_secs(9)).await;
        assert_eq!(state.counters.sessions.get(), 1, "still within 10 s");
        // Checked at heartbeat ticks: closed by the first tick after 10 s.
        sleep(Duration::from_secs(3)).await;
        assert_eq!(state.counters.sessions.get(), 0);
    });
}

#[test]
fn a_tunnel_that_answers_pings_with_unimplemented_stays() {
    on_local_set(async {
        let state = state();
        let fetcher: fetcher::Client = capnp_rpc::new_client(Alive);
        let gateway = connect(&state, &fetcher);
        let _registration = register(&gateway, "alive", &fetcher).await.unwrap();
        sleep(Duration::from_secs(120)).await;
        assert_eq!(lookup(&state, "alive"), "live");
    });
}

#[test]
fn a_mute_tunnel_is_dropped_at_its_heartbeat_timeout_and_its_name_held_for_the_grace() {
    on_local_set(async {
        let state = state();
        let fetcher: fetcher::Client = capnp_rpc::new_client(Mute);
        let gateway = connect(&state, &fetcher);
        let _registration = register(&gateway, "mute", &fetcher).await.unwrap();
        // First ping at 2 s, given up at 7 s.
        sleep(Duration::from_millis(6900)).await;
        assert_eq!(lookup(&state, "mute"), "live");
        sleep(Duration::from_millis(200)).await;
        assert_eq!(lookup(&state, "mute"), "held");
        assert_eq!(state.counters.sessions.get(), 0);
        // Held for 30 s from the drop, then free.
        sleep(Duration::from_millis(29_800)).await;
        assert_eq!(lookup(&state, "mute"), "held");
        sleep(Duration::from_millis(300)).await;
        assert_eq!(lookup(&state, "mute"), "unknown");
    });
}

#[test]
fn a_held_name_comes_back_to_its_token_only() {
    on_local_set(async {
        let state = with_tokens(&["alice", "bob"]);
        let fetcher: fetcher::Client = capnp_rpc::new_client(Alive);
        let first = connect(&state, &fetcher);
        let registration = register_with(&first, "kept", "alice", &fetcher).await;
        drop(registration);
        sleep(Duration::from_millis(10)).await;
        assert_eq!(lookup(&state, "kept"), "held");
        let other = connect(&state, &fetcher);
        let bob = register_with(&other, "kept", "bob", &fetcher).await.err();
        assert_eq!(bob, Some(RegisterError::NameTaken), "another token waits");
        let alice = register_with(&other, "kept", "alice", &fetcher).await;
        assert!(
            alice.is_ok(),
            "the same token gets it back within the grace"
        );
    });
}

#[test]
fn one_connection_may_hold_sixteen_names() {
    on_local_set(async {
        let state = state();
        let fetcher: fetcher::Client = capnp_rpc::new_client(Alive);
        let gateway = connect(&state, &fetcher);
        let mut held = Vec::new();
        for i in 0..16 {
            held.push(
                register(&gateway, &format!("n{i}"), &fetcher)
                    .await
                    .unwrap(),
            );
        }
        let refused = register(&gateway, "n16", &fetcher).await.err();
        assert_eq!(refused, Some(RegisterError::TooManyNames));
        // A freed name makes room again.
        drop(held.pop());
        sleep(Duration::from_millis(10)).await;
        assert!(register(&gateway, "n16", &fetcher).await.is_ok());
    });
}
