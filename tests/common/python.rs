//! Python peers for the interop tests: a venv provisioned once, and child processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::peer::Peer;
use super::{announce_missing, skip_unless_ci, TestGateway};

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

/// Starts `script` with `args` under the venv's `python`.
pub fn spawn(python: &Path, script: &str, args: &[&str]) -> Peer {
    let mut command = Command::new(python);
    command
        .arg(script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1"); // no __pycache__ in tests/python
    Peer::spawn(command)
}

/// How `tests/python/capnp_tunnel.py` dials the gateway.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// Raw RPC on the gateway's `--rpc-listen` port.
    Tcp,
    /// RPC over the binary messages of a WebSocket to the public port's `/_capstan/connect`.
    WebSocket,
}

impl Transport {
    /// The address the Python tunnel dials `gateway` at.
    pub fn url(self, gateway: &TestGateway) -> String {
        match self {
            Self::Tcp => gateway.rpc_url(),
            Self::WebSocket => format!("ws://{}", gateway.addr()),
        }
    }
}
