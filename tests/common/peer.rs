//! Peer processes of the interop tests: stdout as lines, stderr kept, killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::within;

/// A peer process (Python or C++): its stdout as lines, its stderr kept for failures, and
/// killed on drop.
pub struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    /// Starts `command` with piped output.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel(1024);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        // Kept for the failure message: a traceback explains more than a timeout.
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

    /// The next stdout line; panics with the peer's stderr if there is none.
    pub async fn line(&mut self) -> String {
        match within("peer output", self.lines.recv()).await {
            Some(line) => line,
            None => {
                // stdout is closed: wait for the exit so that all of stderr is in.
                let status = self.child.wait().unwrap();
                panic!("the peer exited {status}: {}", self.stderr.lock().unwrap());
            }
        }
    }

    /// Waits for the peer to exit: its status, all of its stdout, and its stderr.
    pub async fn exit(&mut self) -> (ExitStatus, String, String) {
        let mut stdout = String::new();
        // stdout closes when the process ends; then all of stderr is in after `wait`.
        while let Some(line) = within("peer exit", self.lines.recv()).await {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stdout, stderr)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
