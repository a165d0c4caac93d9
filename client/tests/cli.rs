//! The `capstan` command as a user runs it: URL on the first stdout line, clear errors,
//! non-zero exits, graceful stop on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Kills the child if the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn capstan(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capstan"));
    command
        .args(args)
        .env_remove("CAPSTAN_GATEWAY")
        .env_remove("CAPSTAN_TOKEN")
        .env_remove("CAPSTAN_NAME")
        .env("RUST_LOG", "info");
    command
}

fn start(args: &[&str]) -> (Running, BufReader<ChildStdout>) {
    let mut child = capstan(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (Running(child), stdout)
}

fn first_line(stdout: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// An origin that answers every request with "hello from origin", one thread per request.
fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream));
        }
    });
    addr
}

fn answer(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let body = "hello from origin";
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A raw HTTP/1.1 GET to `addr` with `host`; returns the whole response text.
fn get(addr: &str, host: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn terminate(running: &mut Running) -> std::process::ExitStatus {
    let pid = running.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    running.0.wait().unwrap()
}

#[test]
fn bare_capstan_port_serves_through_its_embedded_gateway() {
    let origin = origin();
    let (mut running, mut stdout) = start(&[&origin.port().to_string(), "--name", "embedded"]);
    let url = first_line(&mut stdout);
    let host = url
        .strip_prefix("http://")
        .expect("a URL on the first line");
    assert!(host.starts_with("embedded.localhost:"), "{url}");
    let port = host.rsplit_once(':').unwrap().1;
    let addr = format!("127.0.0.1:{port}");

    let by_name = get(&addr, host);
    assert!(by_name.starts_with("HTTP/1.1 200"), "{by_name}");
    assert!(by_name.ends_with("hello from origin"), "{by_name}");
    // The bare address reaches the single tunnel too.
    let bare = get(&addr, &addr);
    assert!(bare.ends_with("hello from origin"), "{bare}");

    assert!(terminate(&mut running).success(), "SIGTERM is a clean exit");
}

#[test]
fn gateway_and_tunnel_processes_work_together_and_refuse_clearly() {
    let origin = origin().port().to_string();
    let (_gateway, mut stdout) =
        start(&["gateway", "--listen", "127.0.0.1:0", "--token", "s3cret"]);
    let gateway = first_line(&mut stdout);
    assert!(gateway.starts_with("http://127.0.0.1:"), "{gateway}");

    let (mut tunnel, mut stdout) = start(&[
        &origin,
        "--gateway",
        &gateway,
        "--name",
        "demo",
        "--token",
        "s3cret",
    ]);
    let url = first_line(&mut stdout);
    let port = gateway.rsplit_once(':').unwrap().1;
    assert_eq!(url, format!("http://demo.localhost:{port}"));
    let response = get(
        &format!("127.0.0.1:{port}"),
        &format!("demo.localhost:{port}"),
    );
    assert!(response.ends_with("hello from origin"), "{response}");

    let refusals = [
        (vec!["--name", "other", "--token", "wrong"], "token"),
        (
            vec!["--name", "Not_A_Label", "--token", "s3cret"],
            "invalid name",
        ),
        (vec!["--name", "demo", "--token", "s3cret"], "already taken"),
    ];
    for (extra, expected) in refusals {
        let mut args = vec![origin.as_str(), "--gateway", gateway.as_str()];
        args.extend(extra);
        let output = capstan(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(output.stdout.is_empty(), "no URL for {args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(terminate(&mut tunnel).success());
}

#[test]
fn no_port_is_a_usage_error() {
    let output = capstan(&[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PORT"));
}
