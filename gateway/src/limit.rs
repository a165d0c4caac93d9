//! Limits on the ports: open connections per IP address, and what a visitor over it gets.

use std::net::IpAddr;
use std::rc::Rc;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::State;

/// One open connection counted against its IP address until dropped.
pub(crate) struct IpSlot {
    state: Rc<State>,
    ip: IpAddr,
}

impl IpSlot {
    /// Counts a connection from `ip`, or refuses it when the address has as many open as
    /// `max_connections_per_ip` allows.
    pub(crate) fn take(state: &Rc<State>, ip: IpAddr) -> Option<Self> {
        let limit = state.options.max_connections_per_ip;
        let mut per_ip = state.per_ip.borrow_mut();
        let open = per_ip.entry(ip).or_insert(0);
        if limit != 0 && *open >= limit {
            debug!(%ip, limit, "connection refused: too many from this address");
            return None;
        }
        *open += 1;
        Some(Self {
            state: state.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.state.per_ip.borrow_mut();
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// How long a refused connection is kept to let its 429 arrive.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Tells a visitor over the limit so, and closes. The request is never parsed: that would
/// be the work the limit exists to refuse. What the visitor sends meanwhile is read and
/// dropped for a moment, since closing a socket with unread bytes resets it, and a reset
/// can destroy the 429 before the visitor reads it.
pub(crate) async fn refuse_http(mut stream: TcpStream) {
    const BODY: &str = "capstan: too many connections from your address; try again later\n";
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let linger = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}
