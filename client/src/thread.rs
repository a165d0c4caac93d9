//! A tunnel on a thread of its own, for multi-threaded programs and tests.

use capstan::local::{LocalThread, LocalThreadError};

use crate::{ClientOptions, ConnectError, Counters, Origin, Tunnel};

/// A tunnel running on its own thread with a single-threaded runtime.
///
/// Dropping it shuts the tunnel down and waits for the thread.
pub struct TunnelThread {
    url: String,
    name: String,
    registrations: tokio::sync::watch::Receiver<u64>,
    counters: Counters,
    thread: LocalThread<Result<(), ConnectError>>,
}

impl TunnelThread {
    /// Connects and registers on a new thread, returning once the tunnel is registered.
    ///
    /// `make_origin` runs on that thread, so the origin itself need not be `Send`.
    pub fn spawn<O, F>(options: ClientOptions, make_origin: F) -> Result<Self, ConnectError>
    where
        O: Origin,
        F: FnOnce() -> O + Send + 'static,
    {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = LocalThread::spawn("capstan-tunnel", move |stopped| async move {
            let tunnel = match Tunnel::connect(options, make_origin()).await {
                Ok(tunnel) => tunnel,
                Err(err) => {
                    let _ = ready_tx.send(Err(err)); // Reported through `spawn`.
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok((
                tunnel.url().to_owned(),
                tunnel.name().to_owned(),
                tunnel.registrations(),
                tunnel.counters(),
            )));
            tunnel
                .run(async {
                    let _ = stopped.await; // A dropped sender also means stop.
                })
                .await
        })?;
        let (url, name, registrations, counters) = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("the tunnel thread died before registering"))??;
        Ok(Self {
            url,
            name,
            registrations,
            counters,
            thread,
        })
    }

    /// The public URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// See [`Tunnel::registrations`].
    pub fn registrations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.registrations.clone()
    }

    /// Live counts of WebSockets and capabilities.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Shuts the tunnel down gracefully and waits for its thread.
    pub fn shutdown(mut self) -> Result<(), ConnectError> {
        match self.thread.stop_and_join() {
            Ok(result) => result.unwrap_or(Ok(())),
            Err(LocalThreadError::Runtime(err)) => Err(err.into()),
            Err(err @ LocalThreadError::Panicked) => Err(std::io::Error::other(err).into()),
        }
    }
}
