//! A real HTTP origin on 127.0.0.1 standing in for the Mastodon core.
//!
//! Every answer is JSON describing the request it got (method, path, version, headers), so
//! tests can see exactly what the edge forwarded. `/slow/<ms>` answers after a delay,
//! `/status/<code>` answers with that status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Origin {
    pub address: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Origin {
    /// Starts an origin on a port the kernel picks.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        Self::serve(listener)
    }

    /// Starts an origin on a given address (to bring a "dead" core back).
    pub async fn start_at(address: SocketAddr) -> Origin {
        let listener = TcpListener::bind(address).await.expect("bind origin");
        Self::serve(listener)
    }

    fn serve(listener: TcpListener) -> Origin {
        let address = listener.local_addr().expect("origin address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        answer(req, peer)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin {
            address,
            hits,
            task,
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/echo-upgrade" {
        return Ok(echo_upgrade(req));
    }
    let mut status = 200u16;
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(500);
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).to_string(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let body = json!({
        "method": method,
        "uri": uri,
        "version": version,
        "peer": peer.to_string(),
        "headers": headers,
        "body_length": body_len,
    })
    .to_string();
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("connection", "x-origin-private")
        .header("x-origin-private", "per-hop")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(body)))
        .expect("response");
    Ok(response)
}

/// Answers an `Upgrade: websocket` request with 101 and then echoes every byte back, as a
/// stand-in for the streaming API (no websocket framing: the edge must not care).
fn echo_upgrade(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_websocket = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return Response::builder()
            .status(426)
            .body(Full::new(Bytes::from_static(b"upgrade required")))
            .expect("response");
    }
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .expect("response")
}

/// The headers an origin answer says it received, by lower-case name.
pub fn seen_headers(body: &serde_json::Value, name: &str) -> Vec<String> {
    body["headers"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|pair| pair[0].as_str() == Some(name))
                .filter_map(|pair| pair[1].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
