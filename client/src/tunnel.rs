//! A tunnel's life: first registration, heartbeat, reconnect with capped backoff, drain.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capstan::capstan_capnp::{fetcher, RegisterError};
use capstan::limits::Limits;
use tracing::{info, warn};

use crate::connect::{register, ConnectError, Connection};
use crate::fetcher::{Active, FetcherImpl};
use crate::origin::Origin;
use crate::{ClientOptions, Counters};

/// First wait before a reconnect; it doubles up to `ClientOptions::max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// A connection that lived this long was healthy: the next failure starts the backoff over.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// A registered tunnel. Call [`run`](Tunnel::run) to serve until shutdown.
///
/// It runs on the current `LocalSet` (capnp-rpc is single-threaded).
pub struct Tunnel {
    options: ClientOptions,
    counters: Counters,
    /// Counts successful registrations: 1 after `connect`, +1 per reconnect.
    registrations: tokio::sync::watch::Sender<u64>,
    fetcher: fetcher::Client,
    active: Rc<Active>,
    /// What both this end and the gateway accept; the fetcher sends within it. Updated at
    /// each registration, since a restarted gateway may have other limits.
    agreed: Rc<Cell<Limits>>,
    connection: Connection,
}

impl Tunnel {
    /// Connects to the gateway and registers. Errors here are the user's to see: a wrong
    /// token, a bad or taken name, an unreachable gateway.
    pub async fn connect<O: Origin>(
        options: ClientOptions,
        origin: O,
    ) -> Result<Self, ConnectError> {
        let active = Rc::new(Active::default());
        let counters = Counters::default();
        let agreed = Rc::new(Cell::new(options.limits()));
        let fetcher: fetcher::Client = capnp_rpc::new_client(FetcherImpl::new(
            origin,
            active.clone(),
            counters.clone(),
            agreed.clone(),
        ));
        Self::register_fetcher(options, fetcher, active, counters, agreed).await
    }

    /// Registers `fetcher`, a `Fetcher` capability of your own: the lowest level, where
    /// your code answers `fetch` and `connectWebSocket` calls itself (see
    /// `examples/fetcher.rs`). The drain on shutdown does not track its calls.
    pub async fn connect_fetcher(
        options: ClientOptions,
        fetcher: fetcher::Client,
    ) -> Result<Self, ConnectError> {
        let agreed = Rc::new(Cell::new(options.limits()));
        Self::register_fetcher(options, fetcher, Rc::default(), Counters::default(), agreed).await
    }

    async fn register_fetcher(
        options: ClientOptions,
        fetcher: fetcher::Client,
        active: Rc<Active>,
        counters: Counters,
        agreed: Rc<Cell<Limits>>,
    ) -> Result<Self, ConnectError> {
        let name = options.name.clone().unwrap_or_default();
        let limits = options.limits();
        let connection =
            register(&options.gateway, &name, &options.token, &fetcher, limits).await?;
        agreed.set(connection.agreed);
        Ok(Self {
            options,
            counters,
            registrations: tokio::sync::watch::Sender::new(1),
            fetcher,
            active,
            agreed,
            connection,
        })
    }

    /// The sizes both this tunnel and its gateway accept, which it sends within: the
    /// smaller of each of the two ends' limits. A `Fetcher` of your own
    /// ([`connect_fetcher`](Self::connect_fetcher)) must keep to these too.
    pub fn limits(&self) -> Limits {
        self.agreed.get()
    }

    /// The public URL, e.g. `http://demo.localhost:8080`.
    pub fn url(&self) -> &str {
        &self.connection.url
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.connection.name
    }

    /// Live counts of WebSockets and capabilities.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Watches the number of successful registrations: 1 after `connect`, one more after
    /// each reconnect. Lets a program (or test) react when the tunnel is back.
    pub fn registrations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.registrations.subscribe()
    }

    /// Serves until `shutdown` resolves, reconnecting whenever the connection is lost.
    ///
    /// On shutdown it unregisters, lets requests in flight finish for up to
    /// `drain_timeout`, and returns. It returns an error only when a reconnect is refused
    /// for good (see [`ConnectError::is_fatal`]).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ConnectError> {
        tokio::pin!(shutdown);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let since = Instant::now();
            tokio::select! {
                reason = watch(&mut self.connection, &self.options) => {
                    warn!(tunnel = %self.connection.name, %reason, "connection lost; reconnecting");
                }
                () = &mut shutdown => {
                    self.drain().await;
                    return Ok(());
                }
            }
            // A connection that stopped answering may still be open at the gateway, which
            // would keep our name taken: close it before asking for the name again.
            self.connection.rpc.close();
            if since.elapsed() >= HEALTHY_AFTER {
                backoff = FIRST_BACKOFF;
            }
            loop {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(self.options.max_backoff);
                let attempt = register(
                    &self.options.gateway,
                    &self.connection.name,
                    &self.options.token,
                    &self.fetcher,
                    self.options.limits(),
                );
                match attempt.await {
                    Ok(connection) => {
                        info!(tunnel = %connection.name, url = %connection.url, "reconnected");
                        self.agreed.set(connection.agreed);
                        self.connection = connection;
                        self.registrations.send_modify(|n| *n += 1);
                        break;
                    }
                    Err(err) if err.is_fatal() => return Err(err),
                    Err(
                        err @ ConnectError::Refused {
                            code: RegisterError::NameTaken,
                            ..
                        },
                    ) => {
                        // Our old connection may not have been noticed dead yet.
                        warn!(%err, "name still taken; retrying in {backoff:?}");
                    }
                    Err(err) => warn!(%err, "reconnect failed; retrying in {backoff:?}"),
                }
            }
        }
    }

    /// Unregisters, then waits for in-flight requests, at most `drain_timeout`.
    async fn drain(self) {
        let Self {
            connection,
            active,
            options,
            ..
        } = self;
        drop(connection.registration);
        if tokio::time::timeout(options.drain_timeout, active.idle())
            .await
            .is_err()
        {
            warn!(
                "requests still in flight after {:?}; closing",
                options.drain_timeout
            );
        }
        drop(connection.rpc);
    }
}

/// Resolves with a reason once the connection is gone or stops answering pings.
async fn watch(connection: &mut Connection, options: &ClientOptions) -> String {
    let Connection {
        rpc, registration, ..
    } = connection;
    let heartbeat = async {
        loop {
            tokio::time::sleep(options.heartbeat_interval).await;
            let ping = registration.ping_request().send().promise;
            match tokio::time::timeout(options.heartbeat_timeout, ping).await {
                // Any answer proves the gateway is alive, as on the gateway's side.
                Ok(Err(err)) if err.kind == capnp::ErrorKind::Disconnected => {
                    return format!("heartbeat failed: {err}")
                }
                Ok(_) => {}
                Err(_) => {
                    return format!("heartbeat unanswered for {:?}", options.heartbeat_timeout)
                }
            }
        }
    };
    tokio::select! {
        reason = heartbeat => reason,
        ended = &mut rpc.task => match ended {
            Ok(Ok(())) => "the gateway closed the connection".into(),
            Ok(Err(err)) => format!("the connection failed: {err}"),
            Err(err) => format!("the connection task ended: {err}"),
        },
    }
}
