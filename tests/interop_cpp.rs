//! A tunnel client built with the reference C++ Cap'n Proto (libcapnp) against the Rust gateway.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use common::peer::Peer;
use common::*;
use futures::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_tungstenite::tungstenite::Error as WsError;

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/capstan.capnp");
const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cpp/peer.c++");

/// Why there is no peer binary.
enum NoPeer {
    /// `capnp`, `g++` or libcapnp-dev is not installed: skip, except in CI.
    Toolchain(String),
    /// The toolchain is there but the build failed: always a failure.
    Build(String),
}

const WHAT: &str = "the C++ Cap'n Proto toolchain";

/// The peer binary, built once per process. `None`: skip (never in CI).
fn peer_binary() -> Option<&'static Path> {
    static PEER: OnceLock<Result<PathBuf, NoPeer>> = OnceLock::new();
    let built = PEER.get_or_init(|| {
        let built = build();
        if let Err(NoPeer::Toolchain(why)) = &built {
            announce_missing(WHAT, &format!(
                "{why}\n!!!!! install it with: apt-get install libcapnp-dev capnproto g++ pkg-config"
            ));
        }
        built
    });
    match built {
        Ok(binary) => Some(binary),
        Err(NoPeer::Build(why)) => panic!("building the C++ peer failed:\n{why}"),
        Err(NoPeer::Toolchain(why)) => skip_unless_ci(WHAT, why),
    }
}

/// `target/cpp-peer/peer`, rebuilt only when the schema or `peer.c++` is newer. The build
/// happens in a directory of its own and the binary is renamed into place, so test
/// processes that build at the same time never see each other's half-written files.
fn build() -> Result<PathBuf, NoPeer> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let out = target.join("cpp-peer");
    let binary = out.join("peer");
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    let newest_source = [SCHEMA, SOURCE]
        .iter()
        .filter_map(|path| modified(Path::new(path)))
        .max()
        .unwrap_or(SystemTime::now());
    if modified(&binary).is_some_and(|built| built > newest_source) {
        return Ok(binary);
    }

    // A tool that cannot be started, or a missing library, is a missing toolchain; any
    // failure after that is a build failure, with the tool's output.
    let run = |command: &mut Command| -> Result<Vec<u8>, NoPeer> {
        let output = command
            .output()
            .map_err(|e| NoPeer::Toolchain(format!("{command:?}: {e}")))?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(NoPeer::Build(format!(
            "{command:?}: {}\n{stderr}",
            output.status
        )))
    };
    let flags = match run(Command::new("pkg-config").args(["--cflags", "--libs", "capnp-rpc"])) {
        Err(NoPeer::Build(why)) => return Err(NoPeer::Toolchain(why)),
        flags => String::from_utf8(flags?).unwrap(),
    };
    let work = out.join(format!("build-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let schema_dir = Path::new(SCHEMA).parent().unwrap();
    let result = (|| {
        run(Command::new("capnp")
            .arg("compile")
            .arg(format!("-oc++:{}", work.display()))
            .arg(format!("--src-prefix={}", schema_dir.display()))
            .arg(SCHEMA))?;
        let started = std::time::Instant::now();
        run(Command::new("g++")
            .args(["-std=c++17", "-O1", "-Wall", "-o"])
            .arg(work.join("peer"))
            .arg("-I")
            .arg(&work)
            .arg(work.join("capstan.capnp.c++"))
            .arg(SOURCE)
            .args(flags.split_whitespace()))?;
        let _ = writeln!(
            std::io::stderr(),
            "interop_cpp: built the C++ peer in {:.1?}",
            started.elapsed()
        );
        std::fs::rename(work.join("peer"), &binary).unwrap();
        Ok(binary.clone())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Starts the peer, which registers `name` at `gateway`'s raw RPC port.
fn spawn(binary: &Path, gateway: &TestGateway, name: &str) -> Peer {
    let rpc = gateway.rpc_url();
    let mut command = Command::new(binary);
    command.arg(rpc.strip_prefix("tcp://").unwrap()).arg(name);
    Peer::spawn(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_tunnel_serves_inline_streamed_and_uploaded_bodies() {
    let Some(binary) = peer_binary() else { return };
    let gateway = TestGateway::start();
    let mut peer = spawn(binary, &gateway, "cpp");
    let url = peer.line().await;
    assert_eq!(
        url,
        format!("http://cpp.localhost:{}", gateway.addr().port())
    );
    let visitor = Visitor::new(gateway.addr());

    // Inline: one round trip, status, headers and body in the `fetch` result.
    let (status, headers, body) = within("GET /small", visitor.get("cpp", "/small")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(headers["x-peer"], "c++");
    assert_eq!(body, "hello from c++");

    // Streamed: `Responder.start`, then 77 `-> stream` writes of 64 KiB or less, then `end`.
    let len: u64 = 5_000_000;
    let download = async {
        let path = format!("/stream?n={len}");
        let request = visitor.request("GET", "cpp", &path);
        let response = visitor.send(request.body(full("")).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-peer"], "c++");
        // Collecting fails if the body was cut off rather than ended.
        response.into_body().collect().await.unwrap().to_bytes()
    };
    // Uploaded meanwhile, on the same connection: chunked, so the C++ side gets a
    // `BodySource`, pipes it into its own `ByteStream` and hashes what arrives.
    let upload_len: u64 = 3 * 1024 * 1024 + 5;
    let upload = async {
        let chunks = futures::stream::iter((0..upload_len).step_by(40_000)).map(move |offset| {
            let n = (upload_len - offset).min(40_000) as usize;
            Ok::<_, std::io::Error>(Frame::data(pattern(offset, n)))
        });
        let request = visitor
            .request("POST", "cpp", "/upload")
            .body(BodyExt::boxed(StreamBody::new(chunks)))
            .unwrap();
        let response = visitor.send(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap().to_bytes()
    };
    let (downloaded, uploaded) = within("download and upload", async {
        tokio::join!(download, upload)
    })
    .await;
    assert_eq!(downloaded.len() as u64, len);
    assert_eq!(Fnv::of(&downloaded), pattern_hash(len));
    let expected = format!("{upload_len} {:016x}", pattern_hash(upload_len));
    assert_eq!(uploaded, expected);

    // A visitor that stalls before reading: the writes back up into the C++ flow-control
    // window, and `end` is sent with many writes still unacknowledged. Every byte must still
    // arrive (the pause builds backpressure; nothing waits on it for readiness).
    let request = visitor.request("GET", "cpp", &format!("/stream?n={len}"));
    let response = within("stalled GET", visitor.send(request.body(full("")).unwrap())).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let body = within("stalled body", response.into_body().collect()).await;
    let body = body.unwrap().to_bytes();
    assert_eq!(body.len() as u64, len, "a short body that ended cleanly");
    assert_eq!(Fnv::of(&body), pattern_hash(len));

    // A small upload of known length rides inline in `request.body` instead.
    let upload = visitor.call("POST", "cpp", "/upload", pattern(0, 1000));
    let (_, _, body) = within("inline upload", upload).await;
    assert_eq!(body, format!("1000 {:016x}", pattern_hash(1000)));

    // connectWebSocket is not implemented: the visitor gets 502, and the tunnel lives on.
    match within("websocket", common::ws::open(&gateway, "cpp", "/ws", &[])).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or(&[]));
            assert!(body.contains("connectWebSocket"), "{body}");
        }
        Err(other) => panic!("expected a 502, got {other}"),
        Ok((_, response)) => panic!("expected a 502, got {response:?}"),
    }
    let (status, _, body) = within("GET /small again", visitor.get("cpp", "/small")).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"hello from c++"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_tunnel_shows_the_gateways_refusal() {
    let Some(binary) = peer_binary() else { return };
    let gateway = TestGateway::start();
    let mut peer = spawn(binary, &gateway, "Bad_Name");
    let (status, stdout, stderr) = peer.exit().await;
    assert_eq!(status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    // The `error` branch's message, printed as is: one line, naming the name.
    let message = stdout.strip_suffix('\n').unwrap_or(&stdout);
    assert!(
        message.starts_with("invalid name \"Bad_Name\": ") && !message.contains('\n'),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}
