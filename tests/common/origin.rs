//! The origin fixture: a small hyper app with routes that expose what the tunnel did.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Semaphore};

use super::{pattern, Fnv};

type OriginBody = BoxBody<Bytes, std::io::Error>;

/// A running origin; its accept loop ends when this is dropped.
pub struct TestOrigin {
    pub addr: SocketAddr,
    /// Permits for `/sse` events and `/hold` answers: the test releases them one by one.
    pub gate: Arc<Semaphore>,
    /// Receives one message per request that reached `/hold`, `/sse` or `/endless`, and
    /// the outcome of each `/sink` upload.
    pub arrivals: tokio::sync::Mutex<mpsc::Receiver<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestOrigin {
    /// Starts the origin on the current tokio runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let (arrived_tx, arrived_rx) = mpsc::channel(1024);
        let gate2 = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let gate = gate2.clone();
                let arrived = arrived_tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| route(req, gate.clone(), arrived.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            gate,
            arrivals: tokio::sync::Mutex::new(arrived_rx),
            task,
        }
    }

    /// Waits for the next request to arrive at `/hold` or `/sse`.
    pub async fn arrival(&self) -> String {
        self.arrivals.lock().await.recv().await.unwrap()
    }
}

fn full(body: impl Into<Bytes>) -> OriginBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn query_number(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn route(
    req: Request<Incoming>,
    gate: Arc<Semaphore>,
    arrived: mpsc::Sender<String>,
) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        // Method, raw target and headers, one per line, in the order received.
        "/echo" | "/a%2Fb/echo" => {
            let mut text = format!(
                "{} {}\n",
                req.method(),
                req.uri().path_and_query().unwrap().as_str()
            );
            for (name, value) in req.headers() {
                text.push_str(&format!(
                    "{name}: {}\n",
                    value.to_str().unwrap_or("<bytes>")
                ));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
            Response::new(full(text))
        }
        // Length and hash of the uploaded body, read as it streams.
        "/sink" => {
            let _ = arrived.try_send("sink: started".to_owned());
            let mut body = req.into_body();
            let (mut len, mut fnv) = (0u64, Fnv::default());
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            len += data.len() as u64;
                            fnv.update(data);
                        }
                    }
                    Err(err) => {
                        let _ = arrived
                            .send(format!("sink: body error after {len} bytes"))
                            .await;
                        return Ok(Response::builder()
                            .status(StatusCode::BAD_REQUEST)
                            .body(full(format!("body error: {err}")))
                            .unwrap());
                    }
                }
            }
            let _ = arrived.try_send(format!("sink: {len} bytes"));
            Response::new(full(format!("{len} {:016x}", fnv.0)))
        }
        // `n` bytes of the pattern, chunked, or with Content-Length when `cl=1`.
        "/download" => {
            let n = query_number(&req, "n").unwrap_or(0);
            let with_length = query_number(&req, "cl") == Some(1);
            let chunks = futures::stream::iter((0..n).step_by(64 * 1024)).map(move |offset| {
                let len = (n - offset).min(64 * 1024) as usize;
                Ok::<_, std::io::Error>(Frame::data(pattern(offset, len)))
            });
            let mut builder = Response::builder();
            if with_length {
                builder = builder.header("content-length", n);
            }
            builder
                .body(BodyExt::boxed(StreamBody::new(chunks)))
                .unwrap()
        }
        // Sends `n` events, each only after the test releases a permit.
        "/sse" => {
            let n = query_number(&req, "n").unwrap_or(3);
            let _ = arrived.send(path.clone()).await;
            let events = futures::stream::unfold(0, move |i| {
                let gate = gate.clone();
                async move {
                    if i == n {
                        return None;
                    }
                    gate.acquire().await.unwrap().forget();
                    let event = format!("id: {i}\ndata: event {i}\n\n");
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(Bytes::from(event))),
                        i + 1,
                    ))
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .unwrap()
        }
        // Answers only after the test releases a permit.
        "/hold" => {
            let _ = arrived.send(path.clone()).await;
            gate.acquire().await.unwrap().forget();
            Response::new(full("released"))
        }
        // A chunked body that sends 1 MiB and then waits forever (cut-off tests).
        "/endless" => {
            let _ = arrived.send(path.clone()).await;
            let head = futures::stream::iter(
                (0..16u64).map(|i| Ok::<_, std::io::Error>(Frame::data(pattern(i * 65536, 65536)))),
            );
            let body = head.chain(futures::stream::pending());
            Response::new(BodyExt::boxed(StreamBody::new(body)))
        }
        "/cookies" => Response::builder()
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; Path=/")
            .header("x-origin", "yes")
            .body(full("cookies"))
            .unwrap(),
        "/head" => Response::builder()
            .header("content-length", 1234)
            .header("etag", "\"v1\"")
            .body(full(if req.method() == http::Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from(vec![b'x'; 1234])
            }))
            .unwrap(),
        _ if path.starts_with("/status/") => {
            let code: u16 = path["/status/".len()..].parse().unwrap();
            let status = StatusCode::from_u16(code).unwrap();
            let body = if matches!(code, 204 | 304) {
                Bytes::new()
            } else {
                Bytes::from(format!("status {code}"))
            };
            Response::builder()
                .status(status)
                .header("x-status", code)
                .body(full(body))
                .unwrap()
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("origin: no such route"))
            .unwrap(),
    };
    Ok(response)
}
