//! A TCP relay between a tunnel and its gateway that a test can cut or freeze.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Forward,
    /// Stop moving bytes but keep the sockets open: a connection that died silently.
    Freeze,
    /// Close every connection made so far.
    Cut,
}

/// Forwards each accepted connection to `target`. New connections always forward; `cut`
/// and `freeze` act on the connections open at the time.
pub struct Relay {
    pub addr: SocketAddr,
    generation: watch::Sender<(u64, Mode)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| g.1 = Mode::Cut);
    }
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (generation, _) = watch::channel((0u64, Mode::Forward));
        let tx = generation.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let mine = tx.borrow().0;
                tokio::spawn(pipe(inbound, outbound, mine, tx.subscribe()));
            }
        });
        Self {
            addr,
            generation,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `mode` to every connection open now; later ones forward normally.
    pub fn set(&self, mode: Mode) {
        self.generation.send_modify(|(generation, m)| {
            *m = mode;
            *generation += 1;
        });
    }
}

async fn pipe(a: TcpStream, b: TcpStream, mine: u64, mut rx: watch::Receiver<(u64, Mode)>) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let mut buf_a = vec![0u8; 64 * 1024];
    let mut buf_b = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { return; }
                let (generation, mode) = *rx.borrow();
                if generation > mine {
                    match mode {
                        Mode::Forward => {}
                        Mode::Cut => return,
                        // Hold the sockets open and never touch them again.
                        Mode::Freeze => {
                            let _keep = (ar, aw, br, bw);
                            while rx.changed().await.is_ok() {
                                if rx.borrow().1 == Mode::Cut {
                                    return;
                                }
                            }
                            return;
                        }
                    }
                }
            }
            n = ar.read(&mut buf_a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if bw.write_all(&buf_a[..n]).await.is_err() { return },
            },
            n = br.read(&mut buf_b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if aw.write_all(&buf_b[..n]).await.is_err() { return },
            },
        }
    }
}
