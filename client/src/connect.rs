//! Dialing the gateway (WebSocket or raw TCP) and registering a name there.

use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capstan::capstan_capnp::{fetcher, gateway, register_result, registration, RegisterError};
use capstan::limits::Limits;
use capstan::transport::{rpc_system, RpcConnection, WebSocketIo};
use tokio_util::compat::TokioAsyncReadCompatExt;

/// Why connecting or registering failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The gateway address is not one we can dial.
    #[error(
        "bad gateway address {0:?}: use http://HOST:PORT, ws://HOST:PORT/PATH or tcp://HOST:PORT"
    )]
    BadAddress(String),
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {address}: {reason}")]
    Unreachable {
        /// What was dialed.
        address: String,
        /// Why it failed.
        reason: String,
    },
    /// The gateway refused the registration; retrying the same request will not help
    /// (except for a taken name, which may free up).
    #[error("{message}")]
    Refused {
        /// The gateway's reason code.
        code: RegisterError,
        /// The gateway's explanation.
        message: String,
    },
    /// A local resource (thread, runtime) could not be set up.
    #[error("the tunnel could not start: {0}")]
    Io(#[from] std::io::Error),
    /// The RPC exchange failed.
    #[error("the gateway connection failed: {0}")]
    Rpc(#[from] capnp::Error),
}

impl ConnectError {
    /// True when retrying cannot succeed: a wrong token or an invalid name.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::BadAddress(_)
                | Self::Refused {
                    code: RegisterError::Unauthorized | RegisterError::InvalidName,
                    ..
                }
        )
    }
}

/// The task that runs one RPC connection. Dropping it ends the connection at once.
pub(crate) struct RpcTask {
    pub(crate) task: tokio_util::task::AbortOnDropHandle<Result<(), capnp::Error>>,
    disconnector: Option<capnp_rpc::Disconnector<Side>>,
}

impl RpcTask {
    /// Ends the connection now: pending calls fail, the socket closes, and the gateway
    /// sees the tunnel go (and holds its name for the reconnect).
    pub(crate) fn close(&mut self) {
        if let Some(disconnector) = self.disconnector.take() {
            capstan::transport::disconnect_now(disconnector);
        }
        self.task.abort();
    }
}

impl Drop for RpcTask {
    fn drop(&mut self) {
        self.close();
    }
}

/// A live registration.
pub(crate) struct Connection {
    pub(crate) rpc: RpcTask,
    pub(crate) registration: registration::Client,
    pub(crate) url: String,
    pub(crate) name: String,
    /// The sizes both this end and the gateway accept (the gateway's are the defaults when
    /// an older gateway said nothing): what this end sends within.
    pub(crate) agreed: Limits,
}

enum Dial {
    WebSocket(String),
    Tcp(String),
}

fn parse(address: &str) -> Result<Dial, ConnectError> {
    let bad = || ConnectError::BadAddress(address.to_owned());
    let (scheme, rest) = address.split_once("://").unwrap_or(("http", address));
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(bad());
    }
    match scheme {
        "http" => Ok(Dial::WebSocket(format!(
            "ws://{rest}{}",
            capstan::CONNECT_PATH
        ))),
        "ws" if rest.contains('/') => Ok(Dial::WebSocket(format!("ws://{rest}"))),
        "ws" => Ok(Dial::WebSocket(format!(
            "ws://{rest}{}",
            capstan::CONNECT_PATH
        ))),
        "tcp" => Ok(Dial::Tcp(rest.to_owned())),
        "https" | "wss" => Err(ConnectError::Unreachable {
            address: address.to_owned(),
            reason: "TLS is not built into this capstan yet; use http:// or tcp://".into(),
        }),
        _ => Err(bad()),
    }
}

async fn open(address: &str, fetcher: &fetcher::Client) -> Result<RpcConnection, ConnectError> {
    let unreachable = |reason: String| ConnectError::Unreachable {
        address: address.to_owned(),
        reason,
    };
    let bootstrap = Some(fetcher.clone().client);
    match parse(address)? {
        Dial::WebSocket(url) => {
            let config = capstan::transport::websocket_config();
            let (socket, _) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                    .await
                    .map_err(|err| unreachable(err.to_string()))?;
            Ok(rpc_system(
                WebSocketIo::new(socket),
                Side::Client,
                bootstrap,
            ))
        }
        Dial::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|err| unreachable(err.to_string()))?;
            let _ = stream.set_nodelay(true);
            Ok(rpc_system(stream.compat(), Side::Client, bootstrap))
        }
    }
}

/// How long dialing and registering may take. A gateway that accepts the connection but
/// never answers would otherwise hang the first connect, or a reconnect, for good.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `address` and registers `fetcher` under `name` ("" lets the gateway pick),
/// declaring that this end accepts `limits`, and agrees on them with the gateway.
pub(crate) async fn register(
    address: &str,
    name: &str,
    token: &str,
    fetcher: &fetcher::Client,
    limits: Limits,
) -> Result<Connection, ConnectError> {
    let registered = register_now(address, name, token, fetcher, limits);
    tokio::time::timeout(CONNECT_TIMEOUT, registered)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Unreachable {
                address: address.to_owned(),
                reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })
        })
}

async fn register_now(
    address: &str,
    name: &str,
    token: &str,
    fetcher: &fetcher::Client,
    limits: Limits,
) -> Result<Connection, ConnectError> {
    let mut rpc = open(address, fetcher).await?;
    let gateway: gateway::Client = rpc.bootstrap(Side::Server);
    let disconnector = Some(rpc.get_disconnector());
    let rpc = RpcTask {
        task: tokio_util::task::AbortOnDropHandle::new(tokio::task::spawn_local(rpc)),
        disconnector,
    };
    let mut request = gateway.register_request();
    request.get().set_name(name);
    request.get().set_token(token);
    request.get().set_fetcher(fetcher.clone());
    limits.write(request.get().init_limits());
    let response = request.send().promise.await?;
    let outcome = (|| -> capnp::Result<_> {
        Ok(match response.get()?.get_result()?.which()? {
            register_result::Ok(ok) => Ok((
                ok.get_registration()?,
                ok.get_url()?.to_string()?,
                ok.get_name()?.to_string()?,
                Limits::read(ok.has_limits().then(|| ok.get_limits()).transpose()?),
            )),
            register_result::Error(error) => Err(ConnectError::Refused {
                code: error.get_code()?,
                message: error.get_message()?.to_string()?,
            }),
        })
    })()?;
    let (registration, url, name, theirs) = outcome?;
    Ok(Connection {
        rpc,
        registration,
        url,
        name,
        agreed: limits.agree(theirs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let ws = |a: &str| match parse(a) {
            Ok(Dial::WebSocket(url)) => url,
            _ => panic!("{a} should dial a WebSocket"),
        };
        assert_eq!(
            ws("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/_capstan/connect"
        );
        assert_eq!(
            ws("127.0.0.1:8080/"),
            "ws://127.0.0.1:8080/_capstan/connect"
        );
        assert_eq!(ws("ws://h:1/custom"), "ws://h:1/custom");
        assert!(matches!(parse("tcp://h:1"), Ok(Dial::Tcp(a)) if a == "h:1"));
        assert!(matches!(parse("ftp://h"), Err(ConnectError::BadAddress(_))));
        assert!(matches!(
            parse("https://h"),
            Err(ConnectError::Unreachable { .. })
        ));
    }
}
