//! The processes under test: the origin, `capstan gateway` and the tunnel, started from
//! their printed first lines, killed, and started again on the same port and name.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How long a process may take to print its first line (its address or URL).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a gateway may take to exit after SIGTERM: its drain is 10 s, plus 1 s to
/// close sockets, plus slack for a loaded machine.
const TERM_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a killed process may take to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts at starting a tunnel or gateway again: the old tunnel's name may not have
/// been freed yet, or the port not yet released.
const START_ATTEMPTS: u32 = 20;

/// Pause between those attempts, so that twenty of them span several seconds.
const START_PAUSE: Duration = Duration::from_millis(250);

/// The tunnel's name; the restarted tunnel must get it back.
pub(crate) const NAME: &str = "soak";

/// Per-request log lines would grow to hundreds of MB in a 30-minute run; connection
/// events (lost, reconnected, registered) stay.
const RUST_LOG: &str = "info,capstan_client::fetcher=warn";

/// One running process, its output in `LOG_DIR/NAME-N.{out,err}`.
pub(crate) struct Proc {
    child: Child,
    pid: u32,
    /// The first line it printed.
    pub(crate) first_line: String,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// `kill -9`, then reaps it.
    pub(crate) async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        tokio::time::timeout(KILL_TIMEOUT, self.child.wait())
            .await
            .context("killed process not reaped")??;
        Ok(())
    }

    /// SIGTERM, then waits for it to exit; false if it had to be killed after `TERM_TIMEOUT`.
    pub(crate) async fn term(&mut self) -> anyhow::Result<bool> {
        // tokio has no SIGTERM of its own, and the bench crate has no libc; kill(1) does it.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        if tokio::time::timeout(TERM_TIMEOUT, self.child.wait())
            .await
            .is_ok()
        {
            return Ok(true);
        }
        self.kill9().await?;
        Ok(false)
    }
}

/// Starts processes and numbers their logs.
struct Spawner {
    log_dir: PathBuf,
    started: u32,
}

impl Spawner {
    async fn start(&mut self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<Proc> {
        self.started += 1;
        let base = self.log_dir.join(format!("{name}-{}", self.started));
        let err_path = base.with_extension("err");
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", RUST_LOG)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&err_path)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().context("no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let first_line = match tokio::time::timeout(
            READY_TIMEOUT,
            first_line(stdout, base.with_extension("out")),
        )
        .await
        {
            Ok(Ok(line)) => line,
            Ok(Err(err)) => bail!("{name} (pid {pid}): {err:#}; stderr: {}", tail(&err_path)),
            Err(_) => bail!("{name} (pid {pid}) printed nothing in {READY_TIMEOUT:?}"),
        };
        Ok(Proc {
            child,
            pid,
            first_line,
        })
    }
}

/// Reads the first line, then copies the rest of stdout to `path` in the background.
async fn first_line(stdout: ChildStdout, path: PathBuf) -> anyhow::Result<String> {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        bail!("exited before printing its first line");
    }
    tokio::fs::write(&path, &line).await?;
    tokio::spawn(async move {
        let Ok(mut file) = tokio::fs::OpenOptions::new().append(true).open(&path).await else {
            return;
        };
        // The copy ends when the process exits; a failed write only loses log lines.
        let _ = tokio::io::copy(&mut reader, &mut file).await;
    });
    Ok(line.trim().to_owned())
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The pids under test right now; None while a process is down. The sampler reads it.
pub(crate) type Pids = Arc<Mutex<[Option<u32>; 2]>>;

/// Origin, gateway and tunnel, all on 127.0.0.1.
pub(crate) struct Cluster {
    spawner: Spawner,
    capstan: PathBuf,
    _origin: Proc,
    origin_addr: String,
    gateway: Proc,
    /// The gateway's address; a restarted gateway listens here again.
    pub(crate) gateway_addr: SocketAddr,
    tunnel: Proc,
    /// The tunnel's public URL, e.g. `http://soak.localhost:PORT`.
    pub(crate) url: String,
    pub(crate) pids: Pids,
    /// Starts that failed and were tried again (a name not yet freed, a port still busy).
    pub(crate) start_retries: u32,
}

impl Cluster {
    /// Starts the three processes; the gateway on a port the OS picks.
    pub(crate) async fn start(
        capstan: &Path,
        origin: &Path,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut spawner = Spawner {
            log_dir: log_dir.to_owned(),
            started: 0,
        };
        let origin_proc = spawner
            .start("origin", origin, &["--listen".into(), "127.0.0.1:0".into()])
            .await?;
        let origin_addr = origin_proc
            .first_line
            .strip_prefix("ready ")
            .context("origin did not print `ready ADDR`")?
            .to_owned();
        let gateway = spawner
            .start("gateway", capstan, &gateway_args("127.0.0.1:0"))
            .await?;
        let gateway_addr: SocketAddr = gateway
            .first_line
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .with_context(|| {
                format!("gateway printed {:?}, not http://ADDR", gateway.first_line)
            })?;
        // Only loopback is ever a target: we asked for 127.0.0.1, and check we got it.
        if !gateway_addr.ip().is_loopback() {
            bail!("the gateway listens on {gateway_addr}, not on loopback");
        }
        let tunnel = spawner
            .start("tunnel", capstan, &tunnel_args(&origin_addr, gateway_addr))
            .await?;
        let url = format!("http://{NAME}.localhost:{}", gateway_addr.port());
        if tunnel.first_line != url {
            bail!("tunnel printed {:?}, expected {url}", tunnel.first_line);
        }
        let pids = Arc::new(Mutex::new([Some(gateway.pid()), Some(tunnel.pid())]));
        Ok(Cluster {
            spawner,
            capstan: capstan.to_owned(),
            _origin: origin_proc,
            origin_addr,
            gateway,
            gateway_addr,
            tunnel,
            url,
            pids,
            start_retries: 0,
        })
    }

    pub(crate) fn gateway_pid(&self) -> u32 {
        self.gateway.pid()
    }

    pub(crate) fn tunnel_pid(&self) -> u32 {
        self.tunnel.pid()
    }

    fn set_pid(&self, index: usize, pid: Option<u32>) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())[index] = pid;
    }

    /// `kill -9` of the tunnel, then a new one with the same name, which must get it back.
    pub(crate) async fn kill_tunnel(&mut self) -> anyhow::Result<()> {
        self.set_pid(1, None);
        self.tunnel.kill9().await?;
        let args = tunnel_args(&self.origin_addr, self.gateway_addr);
        self.tunnel = self.start_again("tunnel", &args).await?;
        if self.tunnel.first_line != self.url {
            bail!(
                "the new tunnel got {:?}, not {}",
                self.tunnel.first_line,
                self.url
            );
        }
        self.set_pid(1, Some(self.tunnel.pid()));
        Ok(())
    }

    /// Stops the gateway (SIGTERM or `kill -9`), then starts one on the same port. Returns
    /// false when SIGTERM did not stop it in time.
    pub(crate) async fn restart_gateway(&mut self, graceful: bool) -> anyhow::Result<bool> {
        self.set_pid(0, None);
        let exited = if graceful {
            self.gateway.term().await?
        } else {
            self.gateway.kill9().await?;
            true
        };
        let args = gateway_args(&self.gateway_addr.to_string());
        self.gateway = self.start_again("gateway", &args).await?;
        self.set_pid(0, Some(self.gateway.pid()));
        Ok(exited)
    }

    /// Starts a process, trying again a bounded number of times if it exits at once.
    async fn start_again(&mut self, name: &str, args: &[String]) -> anyhow::Result<Proc> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match self.spawner.start(name, &self.capstan, args).await {
                Ok(proc) => return Ok(proc),
                Err(err) => last = Some(err),
            }
            self.start_retries += 1;
            tokio::time::sleep(START_PAUSE).await;
        }
        Err(last.expect("at least one attempt")).context(format!("{name} did not start again"))
    }
}

fn gateway_args(listen: &str) -> Vec<String> {
    ["gateway", "--listen", listen].map(String::from).to_vec()
}

fn tunnel_args(origin: &str, gateway: SocketAddr) -> Vec<String> {
    let gateway = format!("http://{gateway}");
    [origin, "--gateway", &gateway, "--name", NAME]
        .map(String::from)
        .to_vec()
}
