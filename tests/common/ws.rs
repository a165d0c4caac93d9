//! Visitor WebSocket helpers shared by the WebSocket test binaries.

use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{within, TestGateway, WsOrigin};
use capstan_client::TunnelThread;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a visitor WebSocket to `path` at tunnel `name`, with extra headers.
pub async fn open(
    gateway: &TestGateway,
    name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Socket, http::Response<Option<Vec<u8>>>), WsError> {
    let mut request = format!("ws://{}{path}", gateway.addr())
        .into_client_request()
        .unwrap();
    let host = format!("{name}.localhost:{}", gateway.addr().port());
    request.headers_mut().insert("host", host.parse().unwrap());
    for (key, value) in headers {
        let name = http::HeaderName::from_bytes(key.as_bytes()).unwrap();
        request.headers_mut().append(name, value.parse().unwrap());
    }
    let config = capstan::websocket::config(64 << 20);
    tokio_tungstenite::connect_async_with_config(request, Some(config), true).await
}

/// Reads the next data message, skipping control frames.
pub async fn next_data(socket: &mut Socket) -> Message {
    loop {
        match within("next message", socket.next()).await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return message,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// Reads until the close frame and returns its code and reason.
pub async fn close_of(socket: &mut Socket) -> (u16, String) {
    loop {
        match within("close frame", socket.next()).await {
            Some(Ok(Message::Close(frame))) => {
                // Keep polling so that our close reply goes out, as a browser's would.
                while let Some(Ok(_)) = within("close reply", socket.next()).await {}
                return frame.map_or((1005, String::new()), |f| {
                    (f.code.into(), f.reason.to_string())
                });
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A gateway with `options` and a tunnel named "ws" to `origin`.
pub fn setup_with(
    options: capstan_gateway::GatewayOptions,
    origin: &WsOrigin,
) -> (TestGateway, TunnelThread) {
    let gateway = TestGateway::with_options(options);
    let tunnel = gateway.tunnel("ws", origin.addr);
    (gateway, tunnel)
}
