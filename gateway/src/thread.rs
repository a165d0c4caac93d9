//! A gateway on a thread of its own, for programs and tests that are not single-threaded.

use std::io;
use std::net::SocketAddr;

use capstan::local::{LocalThread, LocalThreadError};

use crate::{Counters, Gateway, GatewayOptions};

/// A gateway running on its own thread with its own single-threaded runtime.
///
/// Dropping it shuts the gateway down and waits for the thread.
pub struct GatewayThread {
    addr: SocketAddr,
    rpc_addr: Option<SocketAddr>,
    counters: Counters,
    thread: LocalThread<io::Result<()>>,
}

impl GatewayThread {
    /// Starts a gateway on `listener`, and on `rpc_listener` for raw RPC when given.
    pub fn spawn(
        options: GatewayOptions,
        listener: std::net::TcpListener,
        rpc_listener: Option<std::net::TcpListener>,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let rpc_addr = rpc_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        listener.set_nonblocking(true)?;
        if let Some(l) = &rpc_listener {
            l.set_nonblocking(true)?;
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = LocalThread::spawn("capstan-gateway", move |stopped| async move {
            let built = (|| {
                let mut gateway =
                    Gateway::new(options, tokio::net::TcpListener::from_std(listener)?)?;
                if let Some(l) = rpc_listener {
                    gateway = gateway.with_rpc_listener(tokio::net::TcpListener::from_std(l)?);
                }
                Ok::<_, io::Error>(gateway)
            })();
            let gateway = match built {
                Ok(gateway) => gateway,
                Err(err) => {
                    let _ = ready_tx.send(Err(err)); // Reported through `spawn`.
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(gateway.counters()));
            gateway
                .serve(async {
                    let _ = stopped.await; // A dropped sender also means stop.
                })
                .await
        })?;
        let counters = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the gateway thread died while starting"))??;
        Ok(Self {
            addr,
            rpc_addr,
            counters,
            thread,
        })
    }

    /// The public address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The raw RPC address, when one was given.
    pub fn rpc_addr(&self) -> Option<SocketAddr> {
        self.rpc_addr
    }

    /// Live counts of sockets, capabilities and tunnel connections.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops the gateway gracefully and waits for its thread.
    pub fn shutdown(mut self) -> io::Result<()> {
        match self.thread.stop_and_join() {
            Ok(result) => result.unwrap_or(Ok(())),
            Err(LocalThreadError::Runtime(err)) => Err(err),
            Err(err @ LocalThreadError::Panicked) => Err(io::Error::other(err)),
        }
    }
}
