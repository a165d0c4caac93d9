//! The in-process gateway that lets a bare `capstan 3000` work with nothing else running.

use std::io;
use std::net::SocketAddr;

use capstan_gateway::{Gateway, GatewayOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

/// Where the embedded gateway listens when that port is free.
///
/// Loopback only: the embedded gateway is for the developer's own browser and tools.
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7070);

/// A gateway running on the current `LocalSet`, serving `*.localhost` and, since it has
/// a single tunnel, the bare address too.
pub struct Embedded {
    addr: SocketAddr,
    stop: CancellationToken,
    task: AbortOnDropHandle<io::Result<()>>,
}

impl Embedded {
    /// Starts on `addr`; if that port is busy (another `capstan` runs), on a free port.
    pub async fn start(addr: SocketAddr) -> io::Result<Self> {
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                let listener = TcpListener::bind(SocketAddr::new(addr.ip(), 0)).await?;
                info!(busy = %addr, using = %listener.local_addr()?, "default port busy; using another");
                listener
            }
            Err(err) => return Err(err),
        };
        let mut options = GatewayOptions::default();
        options.bare_to_single_tunnel = true;
        // Every visitor of a loopback gateway is this machine: a per-address limit would
        // only limit the developer's own browser and tools.
        options.max_connections_per_ip = 0;
        let gateway = Gateway::new(options, listener)?;
        let addr = gateway.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task =
            tokio::task::spawn_local(async move { gateway.serve(stopped.cancelled_owned()).await });
        Ok(Self {
            addr,
            stop,
            task: AbortOnDropHandle::new(task),
        })
    }

    /// The address tunnels connect to, e.g. `http://127.0.0.1:7070`.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the gateway gracefully.
    pub async fn shutdown(self) -> io::Result<()> {
        self.stop.cancel();
        self.task.await.map_err(io::Error::other)?
    }
}

/// The gateway a tunnel uses: one given by URL, or one embedded in this process.
pub enum GatewayChoice {
    /// A gateway elsewhere, by URL.
    Remote(String),
    /// A gateway running on this `LocalSet`.
    Embedded(Embedded),
}

impl GatewayChoice {
    /// `url` when given; otherwise starts an embedded gateway on [`DEFAULT_ADDR`] (or a
    /// free port if that one is busy).
    pub async fn pick(url: Option<String>) -> io::Result<Self> {
        Ok(match url {
            Some(url) => Self::Remote(url),
            None => Self::Embedded(Embedded::start(DEFAULT_ADDR).await?),
        })
    }

    /// The URL a tunnel dials.
    pub fn url(&self) -> String {
        match self {
            Self::Remote(url) => url.clone(),
            Self::Embedded(embedded) => embedded.gateway_url(),
        }
    }

    /// Stops the embedded gateway, if there is one. Call it after the tunnel has stopped.
    pub async fn shutdown(self) -> io::Result<()> {
        match self {
            Self::Remote(_) => Ok(()),
            Self::Embedded(embedded) => embedded.shutdown().await,
        }
    }
}
