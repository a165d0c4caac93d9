//! The live tunnels by name, and the names held for a reconnecting tunnel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, so that tests can run the grace period on paused time.
use tokio::time::Instant;

use capstan::capstan_capnp::fetcher;
use capstan::limits::Limits;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;

/// One registered tunnel: where its requests go.
pub(crate) struct Tunnel {
    pub(crate) name: String,
    pub(crate) fetcher: fetcher::Client,
    /// The connection it arrived on; several names may share one.
    pub(crate) session: u64,
    /// The sizes both the gateway and this tunnel accept.
    pub(crate) limits: Limits,
    /// Bounds the calls in flight: capnp-rpc queues ordinary calls without limit.
    inflight: Arc<Semaphore>,
    limit: usize,
    token: String,
}

impl Tunnel {
    /// Admits one more request in flight, or refuses with 503 when the tunnel is full.
    pub(crate) fn admit(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        self.inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::TunnelBusy {
                name: self.name.clone(),
                limit: self.limit,
            })
    }
}

/// A name whose tunnel went away, kept for the same token until `until`.
struct Held {
    token: String,
    until: Instant,
}

/// Where a name leads right now.
pub(crate) enum Lookup {
    Live(std::rc::Rc<Tunnel>),
    /// Its tunnel is reconnecting: visitors get 502, not 404.
    Held,
    Unknown,
}

/// Why a registration was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    Taken,
}

/// All names on this gateway. Single-threaded: it lives on the gateway's `LocalSet`.
pub(crate) struct Registry {
    live: HashMap<String, std::rc::Rc<Tunnel>>,
    held: HashMap<String, Held>,
    grace: Duration,
    max_inflight: usize,
}

/// Compares two tokens in constant time, their lengths included: digests of equal length
/// are compared, so the time says nothing about either token.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(a.as_bytes())
        .ct_eq(&Sha256::digest(b.as_bytes()))
        .into()
}

impl Registry {
    pub(crate) fn new(grace: Duration, max_inflight: usize) -> Self {
        Self {
            live: HashMap::new(),
            held: HashMap::new(),
            grace,
            max_inflight,
        }
    }

    /// Registers `name` for `session`, unless another tunnel serves it or holds it.
    ///
    /// A refused `fetcher` comes back, so that the caller drops it after its borrow of
    /// the registry ends: it may be a capability whose drop unregisters a name.
    pub(crate) fn insert(
        &mut self,
        name: &str,
        token: &str,
        fetcher: fetcher::Client,
        session: u64,
        limits: Limits,
    ) -> Result<std::rc::Rc<Tunnel>, (Refusal, fetcher::Client)> {
        self.expire();
        if self.live.contains_key(name) {
            return Err((Refusal::Taken, fetcher));
        }
        if let Some(held) = self.held.get(name) {
            if !same_token(&held.token, token) {
                return Err((Refusal::Taken, fetcher));
            }
            self.held.remove(name);
        }
        let tunnel = std::rc::Rc::new(Tunnel {
            name: name.to_owned(),
            fetcher,
            session,
            limits,
            inflight: Arc::new(Semaphore::new(self.max_inflight)),
            limit: self.max_inflight,
            token: token.to_owned(),
        });
        self.live.insert(name.to_owned(), tunnel.clone());
        Ok(tunnel)
    }

    /// True when `name` can be given to a tunnel that did not ask for it.
    pub(crate) fn is_free(&mut self, name: &str) -> bool {
        self.expire();
        !self.live.contains_key(name) && !self.held.contains_key(name)
    }

    /// Removes `name` if `session` still owns it, and holds it for its token.
    ///
    /// Returns the removed tunnel for the caller to drop once its borrow of the registry
    /// ends: the tunnel's fetcher may be a capability whose drop unregisters a name.
    #[must_use = "drop the tunnel after the registry's borrow ends"]
    pub(crate) fn remove(&mut self, name: &str, session: u64) -> Option<std::rc::Rc<Tunnel>> {
        if self.live.get(name).is_none_or(|t| t.session != session) {
            return None;
        }
        let tunnel = self.live.remove(name)?;
        self.held.insert(
            name.to_owned(),
            Held {
                token: tunnel.token.clone(),
                until: Instant::now() + self.grace,
            },
        );
        Some(tunnel)
    }

    pub(crate) fn lookup(&mut self, name: &str) -> Lookup {
        if let Some(tunnel) = self.live.get(name) {
            return Lookup::Live(tunnel.clone());
        }
        self.expire();
        if self.held.contains_key(name) {
            Lookup::Held
        } else {
            Lookup::Unknown
        }
    }

    /// The tunnel, when exactly one is live: the bare address of an embedded gateway.
    pub(crate) fn single(&self) -> Option<std::rc::Rc<Tunnel>> {
        let mut tunnels = self.live.values();
        match (tunnels.next(), tunnels.next()) {
            (Some(tunnel), None) => Some(tunnel.clone()),
            _ => None,
        }
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live.len()
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.held.retain(|_, held| held.until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn tokens_match_only_when_equal_whatever_their_lengths() {
        assert!(same_token("s3cret", "s3cret"));
        assert!(same_token("", ""));
        for other in ["s3cre", "s3cret!", "S3cret", ""] {
            assert!(!same_token("s3cret", other), "{other:?}");
        }
    }
}
