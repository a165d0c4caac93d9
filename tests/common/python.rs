//! Python peers for the interop tests: a venv provisioned once, and child processes.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use super::{announce_missing, skip_unless_ci, within};

const WHAT: &str = "Python with websockets and pycapnp";

/// The venv's interpreter with `websockets` and pycapnp, provisioned once per process.
/// `None`: skip, which is never allowed under `CI=true`.
pub fn python() -> Option<&'static Path> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let provisioned = PYTHON.get_or_init(|| {
        let provisioned = provision();
        if let Err(why) = &provisioned {
            announce_missing(WHAT, why);
        }
        provisioned
    });
    match provisioned {
        Ok(python) => Some(python),
        Err(why) => skip_unless_ci(WHAT, why),
    }
}

/// `target/pyenv` with websockets and pycapnp 2.x in it; creating the venv or installing is skipped when
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
            "import capnp, capnp.lib.capnp, websockets.asyncio.client",
        ]))
    };
    if check().is_ok() {
        return Ok(python);
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "-q",
        "pycapnp>=2,<3",
        "websockets>=13",
    ]))?;
    check()?;
    Ok(python)
}

/// A running Python peer: its stdout as lines, killed on drop.
pub struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Peer {
    pub fn spawn(python: &Path, script: &str, args: &[&str]) -> Self {
        let mut child = Command::new(python)
            .arg(script)
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1") // no __pycache__ in tests/python
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
    pub async fn line(&mut self) -> String {
        match within("python output", self.lines.recv()).await {
            Some(line) => line,
            None => {
                // stdout is closed: wait for the exit so that all of stderr is in.
                let status = self.child.wait().unwrap();
                panic!("python exited {status}: {}", self.stderr.lock().unwrap());
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
