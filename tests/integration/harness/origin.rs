//! A real HTTP origin on 127.0.0.1 standing in for the Mastodon core.
//!
//! Every answer is JSON describing the request it got (method, path, version, headers), so
//! tests can see exactly what the edge forwarded. `/slow/<ms>` answers after a delay,
//! `/status/<code>` answers with that status, `/bytes/<n>` streams `n` bytes of a known
//! pattern ([`pattern`]).
//!
//! Query parameters shape any answer: `cc=` sets `Cache-Control`, `h=Name:Value` adds a
//! header (repeatable), `hit_header=Name` adds `Name: <how many requests this path has
//! had>`, `head_h=Name:Value` adds a header to answers to `HEAD` only, `etag=` sets an `ETag` and answers a matching `If-None-Match` with 304 (carrying
//! the same extra headers). For `/bytes/`: `chunk=` bytes per write, `delay_ms=` between writes, `chunked=1`
//! leaves out `Content-Length`, `abort_at=` breaks the body off after that many bytes; a
//! single `Range: bytes=a-b` gets a 206 (one starting past the end a 416); without one,
//! `partial=a-b` answers the path's first request with that part, and `claim=a-b` writes another span in its
//! `Content-Range`; `versioned=1` bodies change with [`Origin::change_content`]. `/text/<n>` is JSON text ([`text_answer`]). `/cut/<n>` is `/bytes/<n>` broken off half-way.
//! [`Origin::fail_with`] makes every answer an error status (a core in trouble).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct Origin {
    pub address: SocketAddr,
    hits: Arc<AtomicUsize>,
    control: Arc<Control>,
    task: JoinHandle<()>,
    /// Tells open connections to close, so a dropped origin is really gone.
    stop: tokio::sync::watch::Sender<bool>,
}

/// What a test can change while the origin runs.
#[derive(Default)]
struct Control {
    /// Answer every request with this status when non-zero.
    fail_status: AtomicU16,
    /// Requests by path.
    path_hits: Mutex<HashMap<String, usize>>,
    /// The methods of the requests by path, in the order they came.
    path_methods: Mutex<HashMap<String, Vec<String>>>,
    /// The `Range` of each request by path (empty: none), in the order they came.
    path_ranges: Mutex<HashMap<String, Vec<String>>>,
    /// Body bytes of `/bytes/` answers sent so far.
    body_bytes: AtomicU64,
    /// Bumped by [`Origin::change_content`]: `/bytes/` answers with `versioned=1` have
    /// other bytes and another `ETag` for each value.
    generation: AtomicU64,
}

type OriginBody = BoxBody<Bytes, std::io::Error>;

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
        let control = Arc::new(Control::default());
        let shared = control.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                let control = shared.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let hit = {
                            let mut hits = control.path_hits.lock();
                            let hits = hits.entry(req.uri().path().to_string()).or_default();
                            *hits += 1;
                            *hits
                        };
                        control
                            .path_methods
                            .lock()
                            .entry(req.uri().path().to_string())
                            .or_default()
                            .push(req.method().to_string());
                        control
                            .path_ranges
                            .lock()
                            .entry(req.uri().path().to_string())
                            .or_default()
                            .push(
                                req.headers()
                                    .get("range")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string(),
                            );
                        answer(req, peer, hit, control.clone())
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.wait_for(|stop| *stop) => {}
                    }
                });
            }
        });
        Origin {
            address,
            hits,
            control,
            task,
            stop,
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests answered so far for one path.
    pub fn hits_for(&self, path: &str) -> usize {
        self.control
            .path_hits
            .lock()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// The methods of the requests for one path, in the order they came.
    pub fn methods_for(&self, path: &str) -> Vec<String> {
        self.control
            .path_methods
            .lock()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// The `Range` of each request for one path (empty: none), in the order they came.
    pub fn ranges_for(&self, path: &str) -> Vec<String> {
        self.control
            .path_ranges
            .lock()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Body bytes of `/bytes/` answers sent so far (what an operator pays egress for).
    pub fn body_bytes(&self) -> u64 {
        self.control.body_bytes.load(Ordering::SeqCst)
    }

    /// Changes what `/bytes/` paths with `versioned=1` hold: other bytes, another `ETag`.
    pub fn change_content(&self) {
        self.control.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// From now on every answer is `status` (0: back to normal).
    pub fn fail_with(&self, status: u16) {
        self.control.fail_status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

/// Byte `i` of every `/bytes/` body.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Bytes `range` of a `versioned=1` body after `generation` changes.
pub fn versioned_range(range: std::ops::Range<u64>, generation: u64) -> Vec<u8> {
    range.map(|i| pattern(i + generation)).collect()
}

/// The bytes `range` of a `/bytes/` body.
pub fn pattern_range(range: std::ops::Range<u64>) -> Vec<u8> {
    range.map(pattern).collect()
}

fn full(body: impl Into<Bytes>) -> OriginBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A body fed from a channel, so it can be slow or break off.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|result| result.map(Frame::data)))
    }
}

fn query_params(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let decode = |s: &str| {
                let s = s.replace('+', " ");
                let mut out = Vec::new();
                let bytes = s.as_bytes();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'%' && i + 2 < bytes.len() {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                        if let Ok(b) = u8::from_str_radix(hex, 16) {
                            out.push(b);
                            i += 3;
                            continue;
                        }
                    }
                    out.push(bytes[i]);
                    i += 1;
                }
                String::from_utf8_lossy(&out).to_string()
            };
            Some((decode(k), decode(v)))
        })
        .collect()
}

/// The value of the query parameter `name`.
fn param_of<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn streamed_bytes(
    span: std::ops::Range<u64>,
    params: &[(String, String)],
    generation: u64,
) -> (OriginBody, bool) {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    let chunk = get("chunk").unwrap_or(64 * 1024).max(1);
    let delay = Duration::from_millis(get("delay_ms").unwrap_or(0));
    let abort_at = get("abort_at");
    let chunked = get("chunked") == Some(1);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let (mut sent, total) = (span.start, span.end);
        while sent < total {
            if abort_at.is_some_and(|at| sent >= at) {
                let _ = tx
                    .send(Err(std::io::Error::other("origin broke the body off")))
                    .await;
                return;
            }
            let mut end = (sent + chunk).min(total);
            if let Some(at) = abort_at {
                if sent < at {
                    end = end.min(at);
                }
            }
            if tx
                .send(Ok(Bytes::from(versioned_range(sent..end, generation))))
                .await
                .is_err()
            {
                return;
            }
            sent = end;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    });
    (ChannelBody(rx).boxed(), chunked)
}

async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    hit: usize,
    control: Arc<Control>,
) -> Result<Response<OriginBody>, Infallible> {
    let fail_status = control.fail_status.load(Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/echo-upgrade" {
        return Ok(echo_upgrade(req));
    }
    let params = query_params(&req);
    let mut extra_headers: Vec<(String, String)> = Vec::new();
    let mut etag = None;
    let versioned = params.iter().any(|(k, v)| k == "versioned" && v == "1");
    let generation = if versioned {
        control.generation.load(Ordering::SeqCst)
    } else {
        0
    };
    if versioned {
        etag = Some(format!("\"g{generation}\""));
    }
    for (name, value) in &params {
        match name.as_str() {
            "cc" => extra_headers.push(("cache-control".into(), value.clone())),
            "h" => {
                if let Some((n, v)) = value.split_once(':') {
                    extra_headers.push((n.trim().to_string(), v.trim().to_string()));
                }
            }
            "etag" => etag = Some(format!("\"{value}\"")),
            "hit_header" => extra_headers.push((value.clone(), hit.to_string())),
            "head_h" if req.method() == hyper::Method::HEAD => {
                if let Some((n, v)) = value.split_once(':') {
                    extra_headers.push((n.trim().to_string(), v.trim().to_string()));
                }
            }
            _ => {}
        }
    }
    if fail_status != 0 {
        return Ok(Response::builder()
            .status(fail_status)
            .header("content-type", "text/plain")
            .body(full("the core is in trouble\n"))
            .expect("response"));
    }
    if let Some(etag) = &etag {
        let matches = req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            // Weak comparison, as RFC 9110 §13.1.2 has it for If-None-Match.
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().trim_start_matches("W/") == etag.trim_start_matches("W/"))
            });
        if matches {
            let mut builder = Response::builder()
                .status(304)
                .header("etag", etag.as_str());
            for (n, v) in &extra_headers {
                builder = builder.header(n.as_str(), v.as_str());
            }
            return Ok(builder.body(full(Bytes::new())).expect("response"));
        }
    }
    // `/cut/<n>`: `/bytes/<n>` broken off half-way, for clients that cannot add a query.
    let mut params = params;
    let path = match path.strip_prefix("/cut/") {
        Some(n) => {
            let total: u64 = n.parse().unwrap_or(0);
            params.push(("abort_at".to_string(), (total / 2).to_string()));
            params.push(("chunk".to_string(), "4096".to_string()));
            format!("/bytes/{n}")
        }
        None => path,
    };
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        // One `bytes=a-b` range is honoured, as object stores do; one starting past the
        // end gets a 416.
        let asked = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok())));
        if asked.is_some_and(|(a, _)| a >= total) {
            let mut builder = Response::builder()
                .status(416)
                .header("content-range", format!("bytes */{total}"));
            if let Some(etag) = &etag {
                builder = builder.header("etag", etag.as_str());
            }
            return Ok(builder.body(full(Bytes::new())).expect("response"));
        }
        // `partial=a-b`: a core that answers the path's first request, when it has no
        // `Range`, with that part.
        let asked = asked.or_else(|| {
            let (a, b) = param_of(&params, "partial")
                .filter(|_| hit == 1)?
                .split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()))
        });
        let range = asked.and_then(|(a, b)| {
            let b = b.map_or(total - 1, |b| b.min(total - 1));
            (a <= b).then_some(a..b + 1)
        });
        let span = range.clone().unwrap_or(0..total);
        if req.method() != hyper::Method::HEAD {
            control
                .body_bytes
                .fetch_add(span.end - span.start, Ordering::SeqCst);
        }
        let (body, chunked) = streamed_bytes(span.clone(), &params, generation);
        let mut builder = Response::builder()
            .status(if range.is_some() { 206 } else { 200 })
            .header("content-type", "application/octet-stream");
        if let Some(r) = &range {
            // `claim=a-b`: a core whose Content-Range disagrees with the bytes it sends.
            let span = param_of(&params, "claim")
                .map_or_else(|| format!("{}-{}", r.start, r.end - 1), str::to_string);
            builder = builder.header("content-range", format!("bytes {span}/{total}"));
        }
        if !chunked {
            builder = builder.header("content-length", span.end - span.start);
        }
        if let Some(etag) = &etag {
            builder = builder.header("etag", etag.as_str());
        }
        for (n, v) in &extra_headers {
            builder = builder.header(n.as_str(), v.as_str());
        }
        return Ok(builder.body(body).expect("response"));
    }
    if let Some(n) = path.strip_prefix("/text/") {
        return Ok(text_answer(
            &req,
            n.parse().unwrap_or(0),
            &params,
            &etag,
            &extra_headers,
        ));
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
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("connection", "x-origin-private")
        .header("x-origin-private", "per-hop")
        .header("keep-alive", "timeout=5");
    if let Some(etag) = &etag {
        builder = builder.header("etag", etag.as_str());
    }
    for (n, v) in &extra_headers {
        builder = builder.header(n.as_str(), v.as_str());
    }
    Ok(builder.body(full(body)).expect("response"))
}

/// `len` bytes of JSON that compress like a Mastodon timeline: the same keys over and over,
/// with numbers and names that change.
pub fn timeline_text(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 200);
    text.push(b'[');
    let mut n = 0u64;
    while text.len() < len {
        text.extend_from_slice(
            format!(
                r#"{{"id":"{}","created_at":"2026-12-0{}T10:{:02}:00.000Z","account":{{"acct":"user{}@example.social","display_name":"User {}"}},"content":"<p>post number {} about #fediverse</p>","replies_count":{}}},"#,
                109_000_000_000 + n * 7919,
                1 + n % 5,
                n % 60,
                n % 97,
                n % 97,
                n,
                n % 13
            )
            .as_bytes(),
        );
        n += 1;
    }
    text.truncate(len);
    text
}

/// `/text/<n>`: [`timeline_text`] as `application/json` (or `type=`), with the request's
/// `Accept-Encoding` echoed in `X-Seen-Accept-Encoding`. `encoded=gzip|br|zstd` sends it
/// encoded, as a core that compresses; `fill=zero` makes it `n` zero bytes (a bomb, once
/// encoded).
fn text_answer(
    req: &Request<Incoming>,
    len: usize,
    params: &[(String, String)],
    etag: &Option<String>,
    extra_headers: &[(String, String)],
) -> Response<OriginBody> {
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let plain = if param("fill") == Some("zero") {
        vec![0u8; len]
    } else {
        timeline_text(len)
    };
    let mut builder = Response::builder()
        .status(200)
        .header("content-type", param("type").unwrap_or("application/json"));
    let body = match param("encoded") {
        Some(coding) => {
            builder = builder.header("content-encoding", coding);
            encode(coding, &plain)
        }
        None => plain,
    };
    if let Some(seen) = req.headers().get("accept-encoding") {
        builder = builder.header("x-seen-accept-encoding", seen);
    }
    if let Some(etag) = etag {
        builder = builder.header("etag", etag.as_str());
    }
    for (n, v) in extra_headers {
        builder = builder.header(n.as_str(), v.as_str());
    }
    builder
        .header("content-length", body.len())
        .body(full(body))
        .expect("response")
}

/// `body` in a content coding, by the libraries themselves.
pub fn encode(coding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(body).expect("gzip");
            e.finish().expect("gzip")
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                e.write_all(body).expect("br");
            }
            out
        }
        "zstd" => zstd::encode_all(body, 3).expect("zstd"),
        other => panic!("no coding {other}"),
    }
}

/// `body` decoded from a content coding, by the libraries themselves.
pub fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .expect("gzip body");
        }
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .expect("br body");
        }
        "zstd" => out = zstd::decode_all(body).expect("zstd body"),
        "" => out = body.to_vec(),
        other => panic!("no coding {other}"),
    }
    out
}

/// Answers an `Upgrade: websocket` request with 101 and then echoes every byte back, as a
/// stand-in for the streaming API (no websocket framing: the edge must not care).
fn echo_upgrade(req: Request<Incoming>) -> Response<OriginBody> {
    let wants_websocket = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return Response::builder()
            .status(426)
            .body(full(Bytes::from_static(b"upgrade required")))
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
        .body(full(Bytes::new()))
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
