//! One tunnel connection: the `Gateway` bootstrap, registrations, heartbeat and cleanup.

use std::cell::RefCell;
use std::rc::Rc;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::capstan_capnp::{gateway, register_result, registration, RegisterError};
use capstan::limits::Limits;
use capstan::{name, transport};
use futures::future::join_all;
use tracing::{debug, info, warn, Instrument};

use crate::limit::IpSlot;
use crate::registry::{same_token, Refusal, Tunnel};
use crate::State;

/// Names one tunnel connection may register.
const MAX_NAMES_PER_CONNECTION: usize = 16;

/// Starts a session task over `io`, owned by the gateway's session tracker. `slot` counts
/// the connection against its peer's address until the session ends.
pub(crate) fn spawn<T>(state: &Rc<State>, io: T, peer: String, slot: Rc<IpSlot>)
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin + 'static,
{
    let id = state.next_session_id();
    let live = state.counters.sessions.guard();
    let span = tracing::info_span!("tunnel", session = id, %peer);
    let state2 = state.clone();
    state.sessions.spawn_local(
        async move {
            run(state2, io, id).await;
            drop((live, slot));
        }
        .instrument(span),
    );
}

/// The tunnels registered on one connection.
struct Session {
    id: u64,
    state: Rc<State>,
    tunnels: RefCell<Vec<Rc<Tunnel>>>,
}

impl Session {
    fn unregister(&self, name: &str) {
        info!(tunnel = %name, "tunnel unregistered");
        let mine: Vec<Rc<Tunnel>> = {
            let mut tunnels = self.tunnels.borrow_mut();
            let (gone, kept) = std::mem::take(&mut *tunnels)
                .into_iter()
                .partition(|t| t.name == name);
            *tunnels = kept;
            gone
        };
        let removed = self.state.registry.borrow_mut().remove(name, self.id);
        // Dropped only now that nothing is borrowed: a tunnel's fetcher may be one of the
        // gateway's own capabilities (a peer can pass a `Registration` back as a fetcher),
        // and dropping it may unregister another name, which borrows again.
        drop(mine);
        drop(removed);
    }

    /// Drops every registration: breaks the reference cycle between the connection's
    /// exports (which hold this session) and the fetchers (which hold the connection).
    fn close(&self) {
        let tunnels = std::mem::take(&mut *self.tunnels.borrow_mut());
        let removed: Vec<Rc<Tunnel>> = {
            let mut registry = self.state.registry.borrow_mut();
            tunnels
                .iter()
                .filter_map(|tunnel| registry.remove(&tunnel.name, self.id))
                .collect()
        };
        for tunnel in &tunnels {
            info!(tunnel = %tunnel.name, "tunnel disconnected");
        }
        // As in `unregister`: capabilities are dropped only after the borrows end.
        drop(removed);
        drop(tunnels);
    }
}

async fn run<T>(state: Rc<State>, io: T, id: u64)
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin + 'static,
{
    let session = Rc::new(Session {
        id,
        state: state.clone(),
        tunnels: RefCell::new(Vec::new()),
    });
    let bootstrap: gateway::Client = capnp_rpc::new_client(GatewayImpl {
        session: session.clone(),
    });
    let rpc = transport::rpc_system(io, Side::Server, Some(bootstrap.client));
    let disconnector = rpc.get_disconnector();
    debug!("connection open");
    tokio::select! {
        result = rpc => match result {
            Ok(()) => debug!("connection closed"),
            Err(err) => debug!(%err, "connection ended"),
        },
        reason = heartbeat(&session) => warn!(%reason, "dropping tunnel connection"),
        () = state.stop_sessions.cancelled() => debug!("gateway shutting down"),
    }
    // Fails the visitors' pending calls (they get 502 or a cut body) instead of leaving
    // them waiting on a peer that will never answer.
    transport::disconnect_now(disconnector);
    session.close();
}

/// Returns when the connection should be dropped: a ping went unanswered, or nothing was
/// registered in time.
async fn heartbeat(session: &Session) -> String {
    let options = &session.state.options;
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(options.heartbeat_interval).await;
        let fetchers: Vec<_> = session
            .tunnels
            .borrow()
            .iter()
            .map(|t| t.fetcher.clone())
            .collect();
        if fetchers.is_empty() {
            if started.elapsed() >= options.register_timeout {
                return "no tunnel registered in time".into();
            }
            continue;
        }
        let pings = fetchers.iter().map(|f| f.ping_request().send().promise);
        let Ok(answers) = tokio::time::timeout(options.heartbeat_timeout, join_all(pings)).await
        else {
            return format!("heartbeat unanswered for {:?}", options.heartbeat_timeout);
        };
        // Any answer proves the peer is alive; `unimplemented` is fine for peers that do
        // not know `ping`. Only a dead connection counts against it.
        if let Some(Err(err)) = answers
            .into_iter()
            .find(|a| matches!(a, Err(e) if e.kind == capnp::ErrorKind::Disconnected))
        {
            return format!("heartbeat failed: {err}");
        }
    }
}

struct GatewayImpl {
    session: Rc<Session>,
}

/// A refused registration, as the tunnel will see it.
struct Refused(RegisterError, String);

impl GatewayImpl {
    fn admit(
        &self,
        name: &str,
        token: &str,
        fetcher: capstan::capstan_capnp::fetcher::Client,
        limits: Limits,
    ) -> Result<(Rc<Tunnel>, String), Refused> {
        let state = &self.session.state;
        let tokens = &state.options.tokens;
        if !tokens.is_empty() && !tokens.iter().any(|t| same_token(t, token)) {
            return Err(Refused(
                RegisterError::Unauthorized,
                "the gateway refused the token: it is missing or wrong".into(),
            ));
        }
        // One connection may not hoard names: a flood of `register` costs only itself.
        if self.session.tunnels.borrow().len() >= MAX_NAMES_PER_CONNECTION {
            return Err(Refused(
                RegisterError::TooManyNames,
                format!("a connection may serve at most {MAX_NAMES_PER_CONNECTION} names"),
            ));
        }
        let mut registry = state.registry.borrow_mut();
        let name = if name.is_empty() {
            std::iter::repeat_with(name::random)
                .find(|candidate| registry.is_free(candidate))
                .expect("an endless iterator finds a free name")
        } else {
            name::validate(name).map_err(|err| {
                Refused(
                    RegisterError::InvalidName,
                    format!("invalid name {name:?}: {err}"),
                )
            })?;
            name.to_owned()
        };
        let limits = state.limits().agree(limits);
        let inserted = registry.insert(&name, token, fetcher, self.session.id, limits);
        // The refused fetcher is dropped after the borrow ends (see `Session::unregister`).
        drop(registry);
        let tunnel = inserted.map_err(|(Refusal::Taken, _fetcher)| {
            Refused(
                RegisterError::NameTaken,
                format!("the name {name:?} is already taken by another tunnel"),
            )
        })?;
        Ok((tunnel, name))
    }
}

impl gateway::Server for GatewayImpl {
    async fn register(
        self: Rc<Self>,
        params: gateway::RegisterParams,
        mut results: gateway::RegisterResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let name = params.get_name()?.to_str()?;
        let token = params.get_token()?.to_str()?;
        let fetcher = params.get_fetcher()?;
        // A peer on the schema before `limits` sends none: it gets the defaults.
        let limits = Limits::read(
            params
                .has_limits()
                .then(|| params.get_limits())
                .transpose()?,
        );
        let result = results.get().init_result();
        match self.admit(name, token, fetcher, limits) {
            Ok((tunnel, name)) => {
                let url = self.session.state.url_for(&name);
                info!(tunnel = %name, %url, "tunnel registered");
                self.session.tunnels.borrow_mut().push(tunnel);
                let registration: registration::Client = capnp_rpc::new_client(RegistrationImpl {
                    session: self.session.clone(),
                    name: name.clone(),
                });
                let mut ok = result.init_ok();
                ok.set_registration(registration);
                ok.set_url(&url);
                ok.set_name(&name);
                self.session.state.limits().write(ok.init_limits());
            }
            Err(Refused(code, message)) => {
                info!(name, ?code, "registration refused");
                let mut error: register_result::error::Builder<'_> = result.init_error();
                error.set_code(code);
                error.set_message(&message);
            }
        }
        Ok(())
    }
}

/// Serves the tunnel's name while the tunnel holds it.
struct RegistrationImpl {
    session: Rc<Session>,
    name: String,
}

impl Drop for RegistrationImpl {
    fn drop(&mut self) {
        debug!(tunnel = %self.name, "registration dropped");
        self.session.unregister(&self.name);
    }
}

impl registration::Server for RegistrationImpl {
    async fn ping(
        self: Rc<Self>,
        _: registration::PingParams,
        _: registration::PingResults,
    ) -> Result<(), capnp::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
