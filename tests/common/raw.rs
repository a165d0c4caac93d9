//! Raw Cap'n Proto peers for the misbehaving-peer and limit tests: dialing the gateway's
//! RPC port, registering, and a `Fetcher` of the test's own on a thread of its own.

use std::future::Future;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::capstan_capnp::{fetcher, gateway, register_result, registration, RegisterError};
use capstan::limits::Limits;
use capstan::transport::rpc_system;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::TestGateway;

/// Runs `make()` on a thread of its own with a `LocalSet`: raw capnp peers are `!Send`.
pub fn on_local_thread<F, Fut, T>(make: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, make())
    })
}

/// Connects to the gateway's raw RPC port and returns its bootstrap.
pub async fn dial(rpc: std::net::SocketAddr, fetcher: &fetcher::Client) -> gateway::Client {
    let stream = tokio::net::TcpStream::connect(rpc).await.unwrap();
    let mut system = rpc_system(stream.compat(), Side::Client, Some(fetcher.clone().client));
    let gateway = system.bootstrap(Side::Server);
    tokio::task::spawn_local(system);
    gateway
}

/// Like [`dial`], and also returns the connection's task: dropping it cuts the connection
/// at once, as a crash would.
pub async fn dial_cuttable(
    rpc: std::net::SocketAddr,
    fetcher: &fetcher::Client,
) -> (gateway::Client, tokio_util::task::AbortOnDropHandle<()>) {
    let stream = tokio::net::TcpStream::connect(rpc).await.unwrap();
    let mut system = rpc_system(stream.compat(), Side::Client, Some(fetcher.clone().client));
    let gateway = system.bootstrap(Side::Server);
    let task = tokio::task::spawn_local(async move {
        let _ = system.await;
    });
    (gateway, tokio_util::task::AbortOnDropHandle::new(task))
}

/// Registers `name` for `fetcher`, as a peer on the schema before `limits` would;
/// returns the registration or the refusal code.
pub async fn register(
    gateway: &gateway::Client,
    name: &str,
    fetcher: &fetcher::Client,
) -> Result<registration::Client, RegisterError> {
    register_with(gateway, name, fetcher, None)
        .await
        .map(|(registration, _)| registration)
}

/// Registers `name` for `fetcher`, declaring `limits` if given; returns the registration
/// and the gateway's limits, or the refusal code.
pub async fn register_with(
    gateway: &gateway::Client,
    name: &str,
    fetcher: &fetcher::Client,
    limits: Option<Limits>,
) -> Result<(registration::Client, Limits), RegisterError> {
    let mut request = gateway.register_request();
    request.get().set_name(name);
    request.get().set_token("");
    request.get().set_fetcher(fetcher.clone());
    if let Some(limits) = limits {
        limits.write(request.get().init_limits());
    }
    let response = request.send().promise.await.unwrap();
    match response
        .get()
        .unwrap()
        .get_result()
        .unwrap()
        .which()
        .unwrap()
    {
        register_result::Ok(ok) => {
            let limits = ok.has_limits().then(|| ok.get_limits().unwrap());
            Ok((ok.get_registration().unwrap(), Limits::read(limits)))
        }
        register_result::Error(error) => Err(error.get_code().unwrap()),
    }
}

/// A raw capnp tunnel serving one `Fetcher` under `name` on its own thread, until dropped.
pub struct RawTunnel {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawTunnel {
    pub async fn start<S, F>(gateway: &TestGateway, name: &'static str, make: F) -> Self
    where
        S: fetcher::Server,
        F: FnOnce() -> S + Send + 'static,
    {
        Self::start_with(gateway, name, None, make).await.0
    }

    /// Like [`start`](Self::start), declaring `limits`; also returns the gateway's.
    pub async fn start_with<S, F>(
        gateway: &TestGateway,
        name: &'static str,
        limits: Option<Limits>,
        make: F,
    ) -> (Self, Limits)
    where
        S: fetcher::Server,
        F: FnOnce() -> S + Send + 'static,
    {
        let rpc = gateway.thread.rpc_addr().unwrap();
        let (registered_tx, registered) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = on_local_thread(move || async move {
            let fetcher: fetcher::Client = capnp_rpc::new_client(make());
            let gateway = dial(rpc, &fetcher).await;
            let (_registration, theirs) = register_with(&gateway, name, &fetcher, limits)
                .await
                .unwrap();
            registered_tx.send(theirs).unwrap();
            let _ = stopped.await;
        });
        let theirs = registered.await.unwrap();
        let tunnel = Self {
            stop: Some(stop),
            thread: Some(thread),
        };
        (tunnel, theirs)
    }
}

impl Drop for RawTunnel {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
