//! The WebSocket origin fixture: tokio-tungstenite with routes that expose what arrived.
#![allow(clippy::result_large_err)] // tungstenite's callback type, not ours.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::pattern;

/// A running WebSocket origin; its accept loop ends when this is dropped.
pub struct WsOrigin {
    pub addr: SocketAddr,
    /// What each socket reported: its close code and reason, or its handshake headers.
    pub reports: tokio::sync::Mutex<mpsc::Receiver<String>>,
    /// Messages `/flood` has sent so far.
    pub flooded: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query(path: &str, key: &str) -> Option<String> {
    path.split_once('?')?.1.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

impl WsOrigin {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report_tx, report_rx) = mpsc::channel(4096);
        let flooded = Arc::new(AtomicUsize::new(0));
        let flooded2 = flooded.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, report_tx.clone(), flooded2.clone()));
            }
        });
        Self {
            addr,
            reports: tokio::sync::Mutex::new(report_rx),
            flooded,
            task,
        }
    }

    pub async fn report(&self) -> String {
        self.reports.lock().await.recv().await.unwrap()
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    reports: mpsc::Sender<String>,
    flooded: Arc<AtomicUsize>,
) {
    // tungstenite will not answer an upgrade with a success, so `/plain` is written by hand.
    let mut head = [0u8; 11];
    if stream.peek(&mut head).await.is_ok() && &head == b"GET /plain " {
        use tokio::io::AsyncWriteExt;
        let body = "just a page";
        let response = format!(
            "HTTP/1.1 200 OK\r\nx-refused: yes\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        return;
    }
    let mut seen = String::new();
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let path = request.uri().to_string();
        seen.push_str(&format!("{path}\n"));
        for (name, value) in request.headers() {
            seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        let refuse = |status: StatusCode, body: &str| {
            let mut refusal = ErrorResponse::new(Some(body.to_owned()));
            *refusal.status_mut() = status;
            refusal
                .headers_mut()
                .insert("x-refused", "yes".parse().unwrap());
            refusal
                .headers_mut()
                .insert("content-length", body.len().into());
            Err(refusal)
        };
        if path.starts_with("/refuse") {
            return refuse(StatusCode::FORBIDDEN, "forbidden here");
        }
        let offered = request
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if offered.split(',').any(|p| p.trim() == "chat.v2") {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", "chat.v2".parse().unwrap());
        }
        response
            .headers_mut()
            .insert("set-cookie", "ws=1".parse().unwrap());
        Ok(response)
    };
    let config = capstan::websocket::config(64 << 20);
    let Ok(socket) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let path = seen.lines().next().unwrap_or("").to_owned();
    let (mut sink, mut stream) = socket.split();
    if path.starts_with("/headers") {
        let _ = sink.send(Message::text(seen.clone())).await;
    }
    if path.starts_with("/big") {
        let n: usize = query(&path, "n").unwrap().parse().unwrap();
        let _ = sink.send(Message::binary(pattern(0, n))).await;
    }
    if path.starts_with("/flood") {
        let n: usize = query(&path, "n").unwrap().parse().unwrap();
        let flood = async {
            for i in 0..n {
                if sink
                    .send(Message::binary(pattern(i as u64, 64 * 1024)))
                    .await
                    .is_err()
                {
                    return;
                }
                flooded.fetch_add(1, Ordering::SeqCst);
            }
            // `close=CODE`: close right after the last message.
            if let Some(code) = query(&path, "close") {
                let frame = CloseFrame {
                    code: CloseCode::from(code.parse::<u16>().unwrap()),
                    reason: "flooded".into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
            }
        };
        // Reads beside the flood and reports each text message as "got TEXT": the
        // visitor's messages must arrive even while it reads none of ours.
        let listen = async {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    let _ = reports.send(format!("got {text}")).await;
                }
            }
        };
        tokio::join!(flood, listen);
        return;
    }
    if path.starts_with("/close") {
        let code: u16 = query(&path, "code").unwrap().parse().unwrap();
        let reason = query(&path, "reason").unwrap_or_default();
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        // Our own close: nothing to report, just let the handshake finish.
        while let Some(Ok(_)) = stream.next().await {}
        return;
    }
    // Echo until the visitor closes; report how it closed.
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Close(frame)) => {
                let report = match frame {
                    Some(f) => format!("closed {} {}", u16::from(f.code), f.reason),
                    None => "closed 1005 ".to_owned(),
                };
                let _ = reports.send(report).await;
                return;
            }
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if path.starts_with("/drop") {
                    // Vanish without a close frame: the TCP connection just ends.
                    return;
                }
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            // Pings must stay on the visitor's hop; report any that arrive.
            Ok(Message::Ping(_)) => {
                let _ = reports.send("ping".to_owned()).await;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = reports.send("dropped without close".to_owned()).await;
}
