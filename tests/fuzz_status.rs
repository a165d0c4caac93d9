//! Property tests of the response status end to end: what a visitor gets when a tunnel answers `fetch` with any `u16`.

mod common;

use std::net::SocketAddr;
use std::rc::Rc;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::capstan_capnp::{fetcher, gateway};
use capstan::transport::rpc_system;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::TokioAsyncReadCompatExt;

/// Cases per property unless `PROPTEST_CASES` says otherwise: one small request each.
const CI_CASES: u32 = 64;

/// The run's configuration (see `common::fuzz_config`).
fn config() -> ProptestConfig {
    fuzz_config(CI_CASES)
}

/// Answers `GET /N` inline with status N and a short body, whatever N is: a raw capnp
/// tunnel, since a real origin behind hyper could not send most of them.
struct AnyStatus;

impl fetcher::Server for AnyStatus {
    async fn fetch(
        self: Rc<Self>,
        params: fetcher::FetchParams,
        mut results: fetcher::FetchResults,
    ) -> Result<(), capnp::Error> {
        let path = params.get()?.get_request()?.get_path()?;
        let status = std::str::from_utf8(&path[1..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| capnp::Error::failed("the path names no status".into()))?;
        let mut response = results.get().init_response();
        response.set_status(status);
        response.set_body(b"inline");
        Ok(())
    }
}

/// `AnyStatus` registered as `status` on its own thread, until dropped.
struct StatusTunnel {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusTunnel {
    fn start(rpc: SocketAddr) -> Self {
        let (registered_tx, registered) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&runtime, async move {
                let fetcher: fetcher::Client = capnp_rpc::new_client(AnyStatus);
                let stream = tokio::net::TcpStream::connect(rpc).await.unwrap();
                let mut system =
                    rpc_system(stream.compat(), Side::Client, Some(fetcher.clone().client));
                let gateway: gateway::Client = system.bootstrap(Side::Server);
                tokio::task::spawn_local(system);
                let mut request = gateway.register_request();
                request.get().set_name("status");
                request.get().set_token("");
                request.get().set_fetcher(fetcher);
                let answer = request.send().promise.await.unwrap();
                // Held while the tunnel serves: dropping it unregisters the name.
                let _result = answer.get().unwrap().get_result().unwrap();
                registered_tx.send(()).unwrap();
                let _ = stopped.await; // A dropped sender also means stop.
            });
        });
        registered.recv().expect("the tunnel registered");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for StatusTunnel {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(())); // The thread may be gone.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join(); // Its panic, if any, already failed the test.
        }
    }
}

/// The status line a visitor gets for `GET /{status}`, read off the socket as sent:
/// an HTTP client would interpret a 1xx answer rather than show it.
async fn status_line(gateway: SocketAddr, status: u16) -> String {
    let mut socket = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let request = format!(
        "GET /{status} HTTP/1.1\r\nHost: status.localhost:{}\r\nConnection: close\r\n\r\n",
        gateway.port()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within("answer", socket.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

/// The code in a status line such as `HTTP/1.1 200 OK`.
fn code(line: &str) -> Option<u16> {
    line.split(' ').nth(1)?.parse().ok()
}

/// Runs `property` over `statuses` against one gateway with an `AnyStatus` tunnel.
fn check_statuses(
    statuses: impl Strategy<Value = u16>,
    property: fn(u16, Option<u16>) -> Result<(), TestCaseError>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gateway = TestGateway::start();
    let _tunnel = StatusTunnel::start(gateway.thread.rpc_addr().unwrap());
    let mut runner = TestRunner::new(config());
    let result = runner.run(&statuses, |status| {
        let line = runtime.block_on(status_line(gateway.addr(), status));
        property(status, code(&line))
            .map_err(|err| TestCaseError::fail(format!("{err}; the visitor got {line:?}")))
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// A final status the tunnel may give reaches the visitor as is.
#[test]
fn statuses_200_to_599_reach_the_visitor() {
    check_statuses(200u16..600, |status, got| {
        prop_assert_eq!(got, Some(status));
        Ok(())
    });
}

/// Anything else is the tunnel's fault, and the visitor gets 502: below 100 and above
/// 599 HTTP has no status, and 1xx is no final answer (101 least of all, to a request
/// that asked for no upgrade).
#[test]
fn the_visitor_gets_the_tunnels_status_or_502() {
    // Mostly below 1000, where `http` and hyper draw their lines.
    check_statuses(prop_oneof![any::<u16>(), 0u16..1000], |status, got| {
        let expected = if (200..=599).contains(&status) {
            status
        } else {
            502
        };
        prop_assert_eq!(got, Some(expected));
        Ok(())
    });
}

/// Found by `the_visitor_gets_the_tunnels_status_or_502`: each of these reaches the
/// visitor as something other than 502.
#[test]
fn other_statuses_get_502() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gateway = TestGateway::start();
    let _tunnel = StatusTunnel::start(gateway.thread.rpc_addr().unwrap());
    let mut wrong = Vec::new();
    for status in [0, 99, 100, 101, 103, 199, 600, 999, 1000, u16::MAX] {
        let line = runtime.block_on(status_line(gateway.addr(), status));
        if code(&line) != Some(502) {
            wrong.push(format!("{status} -> {line:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
