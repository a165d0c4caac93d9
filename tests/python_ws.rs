//! End-to-end WebSockets with Python's `websockets` as visitor and as origin, through capstan.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use common::ws::{close_of, next_data, open};
use common::*;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/ws_peer.py");

/// The venv's interpreter, provisioned once per process. `None`: skip (never in CI).
fn python() -> Option<&'static Path> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let provisioned = PYTHON.get_or_init(|| {
        let provisioned = provision();
        if let Err(why) = &provisioned {
            // Straight to stderr: libtest hides eprintln! of tests that pass, and a skip passes.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!! python_ws: Python with `websockets` is unavailable: {why}\n"
            );
        }
        provisioned
    });
    match provisioned {
        Ok(python) => Some(python),
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("python_ws must run in CI: {why}");
            }
            None
        }
    }
}

/// `target/pyenv` with `websockets` in it; creating a venv or installing is skipped when
/// the import already works, so repeated runs cost one interpreter start.
fn provision() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let venv = target.join("pyenv");
    let python = venv.join("bin/python");
    let run = |command: &mut Command| -> Result<(), String> {
        let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{command:?}: {}: {stderr}", output.status))
    };
    let check = || {
        run(Command::new(&python).args([
            "-c",
            "import websockets.asyncio.client, websockets.asyncio.server",
        ]))
    };
    if check().is_ok() {
        return Ok(python);
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "websockets>=13"]))?;
    check()?;
    Ok(python)
}

/// A running `ws_peer.py`: its stdout as lines, killed on drop.
struct Peer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    fn spawn(python: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1") // no __pycache__ in tests/python
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Kept for the failure message: a Python traceback explains more than a timeout.
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, mut pipe) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line; panics with Python's stderr if there is none.
    async fn line(&mut self) -> String {
        match within("python output", self.lines.recv()).await {
            Some(line) => line,
            None => {
                // stdout is closed: wait for the exit so that all of stderr is in.
                let status = self.child.wait().unwrap();
                panic!("python exited {status}: {}", self.stderr.lock().unwrap());
            }
        }
    }

    /// `ws_peer.py server`, with the port it listens on.
    async fn server(python: &Path) -> (Self, std::net::SocketAddr) {
        let mut peer = Self::spawn(python, &["server"]);
        let port: u16 = peer.line().await.parse().unwrap();
        (peer, ([127, 0, 0, 1], port).into())
    }

    /// Runs `ws_peer.py client` against tunnel `name` and returns its JSON result line.
    async fn client(python: &Path, gateway: &TestGateway, name: &str, args: &[&str]) -> String {
        let (path, rest) = args.split_first().unwrap();
        let url = format!("ws://{}{path}", gateway.addr());
        let host = format!("{name}.localhost:{}", gateway.addr().port());
        let mut all = vec!["client", &url, &host];
        all.extend(rest);
        Self::spawn(python, &all).line().await
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_visitor_to_rust_origin() {
    let Some(python) = python() else { return };
    let origin = WsOrigin::start().await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("ws", origin.addr);

    // /headers: the origin first tells what handshake reached it, then echoes.
    let args = [
        "/headers?from=py",
        "--protocols=chat.v1,chat.v2",
        "--headers",
        "--count=200",
        "--close",
        "1000",
        "py done",
    ];
    let result = Peer::client(python, &gateway, "ws", &args).await;
    let prefix = r#"{"subprotocol": "chat.v2", "handshake": ["/headers?from=py", "#;
    assert!(result.starts_with(prefix), "{result}");
    for header in ["sec-websocket-protocol: chat.v1, chat.v2", "x-from: python"] {
        assert!(
            result.contains(&format!("\"{header}\"")),
            "{header}: {result}"
        );
    }
    // Python offers permessage-deflate by default; that is per hop and stays at the gateway.
    assert!(!result.contains("sec-websocket-extensions"), "{result}");
    let suffix = r#""echoed": 200, "close": [1000, "py done"], "ok": true}"#;
    assert!(result.ends_with(suffix), "{result}");
    assert_eq!(
        within("report", origin.report()).await,
        "closed 1000 py done"
    );

    // The origin closes first: Python sees its code and reason.
    let args = [
        "/close?code=4002&reason=origin-bye",
        "--expect-close",
        "4002",
        "origin-bye",
    ];
    let result = Peer::client(python, &gateway, "ws", &args).await;
    let expected =
        r#"{"subprotocol": null, "echoed": 0, "close": [4002, "origin-bye"], "ok": true}"#;
    assert_eq!(result, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_visitor_to_python_origin() {
    let Some(python) = python() else { return };
    let (mut origin, addr) = Peer::server(python).await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("py", addr);

    let (mut socket, response) = open(
        &gateway,
        "py",
        "/",
        &[("sec-websocket-protocol", "chat.v1, chat.v2")],
    )
    .await
    .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    for message in [
        Message::text("héllo ✓ 🦀"),
        Message::binary(pattern(3, 100_000)),
        Message::binary(Bytes::new()),
        Message::text(""),
    ] {
        socket.send(message.clone()).await.unwrap();
        assert_eq!(next_data(&mut socket).await, message);
    }
    let frame = CloseFrame {
        code: CloseCode::from(4000),
        reason: "rust says bye".into(),
    };
    socket.send(Message::Close(Some(frame))).await.unwrap();
    let echoed = close_of(&mut socket).await;
    assert_eq!(echoed, (4000, "rust says bye".to_owned()));
    assert_eq!(origin.line().await, "closed 4000 rust says bye");

    // Python closes first; no subprotocol offered, none chosen.
    let (mut socket, response) = open(&gateway, "py", "/", &[]).await.unwrap();
    assert!(!response.headers().contains_key("sec-websocket-protocol"));
    socket.send(Message::text("please close")).await.unwrap();
    let close = close_of(&mut socket).await;
    assert_eq!(close, (4001, "py-bye".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_visitor_to_python_origin() {
    let Some(python) = python() else { return };
    let (mut origin, addr) = Peer::server(python).await;
    let gateway = TestGateway::start();
    let _tunnel = gateway.tunnel("py", addr);

    let args = [
        "/",
        "--protocols=chat.v1,chat.v2",
        "--count=50",
        "--close",
        "1000",
        "done",
    ];
    let result = Peer::client(python, &gateway, "py", &args).await;
    let expected =
        r#"{"subprotocol": "chat.v2", "echoed": 50, "close": [1000, "done"], "ok": true}"#;
    assert_eq!(result, expected);
    assert_eq!(origin.line().await, "closed 1000 done");
}
