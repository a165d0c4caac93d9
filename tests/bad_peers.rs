//! Misbehaving Cap'n Proto peers cost only their own connection: malformed messages, calls
//! never answered, capabilities dropped early, floods of calls and registrations.

mod common;

use std::rc::Rc;

use bytes::Bytes;
use capstan::capstan_capnp::{fetcher, RegisterError};
use common::raw::{dial, dial_cuttable, on_local_thread, register, RawTunnel};
use common::ws::{close_of, open};
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tunnel whose calls never return: not even `ping`.
struct Silent;

impl fetcher::Server for Silent {
    async fn fetch(
        self: Rc<Self>,
        _: fetcher::FetchParams,
        _: fetcher::FetchResults,
    ) -> Result<(), capnp::Error> {
        std::future::pending().await
    }

    async fn ping(
        self: Rc<Self>,
        _: fetcher::PingParams,
        _: fetcher::PingResults,
    ) -> Result<(), capnp::Error> {
        std::future::pending().await
    }
}

/// A tunnel that starts every answer and every socket, then drops what it got.
struct Quitter;

impl fetcher::Server for Quitter {
    async fn fetch(
        self: Rc<Self>,
        params: fetcher::FetchParams,
        _: fetcher::FetchResults,
    ) -> Result<(), capnp::Error> {
        let responder = params.get()?.get_responder()?;
        let mut start = responder.start_request();
        start.get().init_response().set_status(200);
        let body = start.send().promise.await?.get()?.get_body()?;
        let mut write = body.write_request();
        write.get().set_data(b"partial");
        write.send().await?;
        // Return with no `end`, dropping the body: the visitor must not see a success.
        Ok(())
    }

    async fn connect_web_socket(
        self: Rc<Self>,
        params: fetcher::ConnectWebSocketParams,
        mut results: fetcher::ConnectWebSocketResults,
    ) -> Result<(), capnp::Error> {
        // Accept, hand back a socket, and let go of the visitor's handle at once.
        drop(params.get()?.get_public_socket()?);
        results.get().init_response().set_status(101);
        results.get().set_local_socket(capnp_rpc::new_client::<
            capstan::capstan_capnp::web_socket_handle::Client,
            _,
        >(Sink));
        Ok(())
    }
}

struct Sink;

/// A tunnel that answers every call with `unimplemented`: alive, but serving nothing.
struct Idle;

impl fetcher::Server for Idle {}

impl capstan::capstan_capnp::web_socket_handle::Server for Sink {}

/// A healthy tunnel beside the misbehaving one, checked after each fault.
async fn bystander_works(visitor: &Visitor) {
    let (status, _, body) = visitor.get("bystander", "/cookies").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("cookies")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_close_only_their_connection_at_once() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _bystander = gateway.tunnel("bystander", origin.addr);
    // A well-framed message (one segment of two words) whose content is no RPC message.
    let mut malformed = vec![0, 0, 0, 0, 2, 0, 0, 0];
    malformed.extend_from_slice(&[0xab; 16]);
    // A segment table that announces one segment of 32 MiB + 8 bytes: refused from the
    // table alone, before anything is allocated or waited for.
    let words = (capstan::MAX_RPC_MESSAGE / 8 + 1) as u32;
    let mut oversized = 0u32.to_le_bytes().to_vec();
    oversized.extend_from_slice(&words.to_le_bytes());
    for bytes in [malformed, oversized] {
        let rpc = gateway.thread.rpc_addr().unwrap();
        let mut raw = tokio::net::TcpStream::connect(rpc).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        let mut rest = Vec::new();
        // An `Abort` at most, then the close; well before the 10 s register timeout,
        // which would close it too.
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            raw.read_to_end(&mut rest),
        )
        .await;
        assert!(closed.is_ok(), "the gateway must close it at once");
    }
    bystander_works(&Visitor::new(gateway.addr())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_that_never_answers_is_dropped_and_its_visitors_get_502() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _bystander = gateway.tunnel("bystander", origin.addr);
    let _silent = RawTunnel::start(&gateway, "silent", || Silent).await;

    // Hangs on the silent tunnel until the heartbeat gives up on it (2 s here).
    let visitor = Visitor::new(gateway.addr());
    let (status, _, body) = within("heartbeat verdict", visitor.get("silent", "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    bystander_works(&visitor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_dropped_early_cut_only_their_own_response_or_socket() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _bystander = gateway.tunnel("bystander", origin.addr);
    let _quitter = RawTunnel::start(&gateway, "quitter", || Quitter).await;
    let visitor = Visitor::new(gateway.addr());

    let request = visitor
        .request("GET", "quitter", "/")
        .body(full(Bytes::new()))
        .unwrap();
    let response = within("head", visitor.send(request)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = within("cut body", response.into_body().collect()).await;
    assert!(
        body.is_err(),
        "a body without `end` must not complete: {body:?}"
    );

    // The visitor's handle was dropped: the socket closes with 1001 at once.
    let (mut socket, _) = open(&gateway, "quitter", "/", &[]).await.unwrap();
    assert_eq!(close_of(&mut socket).await.0, 1001);

    bystander_works(&visitor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_calls_and_registrations_cost_only_the_flooder() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _bystander = gateway.tunnel("bystander", origin.addr);
    let rpc = gateway.thread.rpc_addr().unwrap();
    let (flooding_tx, flooding) = tokio::sync::oneshot::channel();
    let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
    let peer = on_local_thread(move || async move {
        let fetcher: fetcher::Client = capnp_rpc::new_client(Idle);
        let gateway = dial(rpc, &fetcher).await;
        // Registrations: a connection may hold 16 names, no more.
        let mut held = Vec::new();
        for i in 0..16 {
            held.push(
                register(&gateway, &format!("flood{i}"), &fetcher)
                    .await
                    .unwrap(),
            );
        }
        let refused = register(&gateway, "flood16", &fetcher).await.err();
        // Calls: 20,000 pings sent without waiting for any answer.
        let pings: Vec<_> = (0..20_000)
            .map(|_| held[0].ping_request().send().promise)
            .collect();
        flooding_tx.send(refused).unwrap();
        let outcomes = futures::future::join_all(pings).await;
        let _ = go.await;
        let answered = outcomes.iter().filter(|a| a.is_ok()).count();
        let dropped = outcomes
            .iter()
            .filter(|a| matches!(a, Err(e) if e.kind == capnp::ErrorKind::Disconnected))
            .count();
        (answered, dropped)
    });
    let refused = flooding.await.unwrap();
    assert_eq!(refused, Some(RegisterError::TooManyNames));
    // While the flood is processed, the other tunnel serves as usual.
    let visitor = Visitor::new(gateway.addr());
    for _ in 0..20 {
        bystander_works(&visitor).await;
    }
    go_tx.send(()).unwrap();
    let (answered, dropped) = tokio::task::spawn_blocking(move || peer.join().unwrap())
        .await
        .unwrap();
    // Either the gateway kept up, or the flood starved the flooder's own heartbeat and the
    // gateway dropped its connection: every call ends one of those two ways.
    assert!(answered > 0, "some pings were answered");
    assert_eq!(
        answered + dropped,
        20_000,
        "{answered} answered, {dropped} dropped"
    );
    bystander_works(&visitor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_passed_back_as_a_fetcher_frees_both_names_on_disconnect() {
    let origin = TestOrigin::start().await;
    let gateway = TestGateway::start();
    let _bystander = gateway.tunnel("bystander", origin.addr);
    let rpc = gateway.thread.rpc_addr().unwrap();
    let sessions = gateway.thread.counters().sessions.clone();
    let peer = on_local_thread(move || async move {
        let fetcher: fetcher::Client = capnp_rpc::new_client(Idle);
        let (gateway, connection) = dial_cuttable(rpc, &fetcher).await;
        let x = register(&gateway, "loopx", &fetcher).await.unwrap();
        // The gateway's own Registration, handed back to it as the fetcher of a second name.
        let x_as_fetcher = fetcher::Client {
            client: capnp::capability::Client::new(x.client.hook.add_ref()),
        };
        let y = register(&gateway, "loopy", &x_as_fetcher).await.unwrap();
        // Only the gateway's tunnel "loopy" still holds X now; a round trip makes sure the
        // gateway has seen the release. Then the peer vanishes: dropping Y drops X, whose
        // unregister once ran while the registry was borrowed, and panicked.
        drop((x, x_as_fetcher));
        y.ping_request().send().promise.await.unwrap();
        drop(connection);
        drop(y);
    });
    tokio::task::spawn_blocking(move || peer.join().unwrap())
        .await
        .unwrap();
    within("the peer's session ends", sessions.wait_for(|n| *n == 1)).await;

    // Both names are held for their token, "" on this open gateway: a new connection with
    // that token gets both back and serves them.
    let rpc = gateway.thread.rpc_addr().unwrap();
    let (registered_tx, registered) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let again = on_local_thread(move || async move {
        let fetcher: fetcher::Client = capnp_rpc::new_client(Idle);
        let gateway = dial(rpc, &fetcher).await;
        let x = register(&gateway, "loopx", &fetcher).await;
        let y = register(&gateway, "loopy", &fetcher).await;
        registered_tx
            .send((x.as_ref().err().copied(), y.as_ref().err().copied()))
            .unwrap();
        let _ = stopped.await;
    });
    assert_eq!(registered.await.unwrap(), (None, None));
    let visitor = Visitor::new(gateway.addr());
    let (status, _, _) = visitor.get("loopx", "/").await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "Idle answers unimplemented"
    );
    bystander_works(&visitor).await;
    stop.send(()).unwrap();
    tokio::task::spawn_blocking(move || again.join().unwrap())
        .await
        .unwrap();
}
