//! Counts and bounds client connections per listener around pingora's HTTP app.
//!
//! Pingora hands each accepted connection (after TLS, if any) to `ServerApp::process_new`.
//! That call is the one place that sees connections open, so it is where
//! `limits.max_connections` is enforced: a connection beyond the limit is closed at once,
//! before any request is read. An admitted connection moves to a task of its own, which
//! holds its slot until it ends; pingora's listener task, whose future keeps the TLS
//! handshake's state, ends there.
//!
//! That task runs the HTTP/1.x keep-alive loop itself, so that a connection waiting for its
//! next request waits in a future of a few hundred bytes, and not inside pingora's request
//! future, which is allocated whole for as long as it waits (tens of KiB per idle
//! connection). Each request head is read here, within `limits.client_header_timeout` of
//! its first byte (of the accept, for a new connection), and handed to the request parser;
//! a client that trickles its head is answered 408 and closed, so it cannot hold its slot.
//! A plain request for a hit that pingora's path has answered before is answered here from
//! the head it wrote (`proxy::fast_hits`); any other request goes to pingora's path with a
//! write buffer for its length alone (`request_buffer.rs`). Everything else (HTTP/2, custom
//! protocols) goes to pingora's own loop, with the deadline of `head_deadline.rs` on its
//! first request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{UniqueID, ALPN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::head_deadline::{HeadDeadlines, HEADER_TIMEOUT};
use crate::metrics;
use crate::proxy::fast_hits::{Answered, FastHits};
use crate::proxy::ProxySettings;
use request_buffer::RequestBuffered;

mod h2;
mod held_writes;
mod request_buffer;

/// A `ServerApp` that counts and bounds the connections its inner app serves.
pub struct CountedApp<A> {
    listener: String,
    inner: Arc<A>,
    open: AtomicUsize,
    /// Read for every new connection, so a reload changes the limit.
    settings: Arc<ArcSwap<ProxySettings>>,
    /// The first-request deadlines of connections handed to pingora's own loop.
    deadlines: Arc<HeadDeadlines>,
    /// Answers plain hits in the HTTP/1 loop, without pingora's request path.
    fast_hits: Option<Arc<FastHits>>,
}

impl<A> CountedApp<A> {
    pub fn new(
        listener: &str,
        inner: A,
        settings: Arc<ArcSwap<ProxySettings>>,
        deadlines: Arc<HeadDeadlines>,
    ) -> Self {
        CountedApp {
            listener: listener.to_string(),
            inner: Arc::new(inner),
            open: AtomicUsize::new(0),
            settings,
            deadlines,
            fast_hits: None,
        }
    }

    /// Lets the HTTP/1 loop answer the plain hits `fast_hits` has recorded.
    pub fn answering_plain_hits(mut self, fast_hits: Arc<FastHits>) -> Self {
        self.fast_hits = Some(fast_hits);
        self
    }
}

/// Starts a TLS connection's first-request clock before its handshake, so the handshake
/// counts against `limits.client_header_timeout` too.
pub struct WatchBeforeTls {
    pub deadlines: Arc<HeadDeadlines>,
    pub settings: Arc<ArcSwap<ProxySettings>>,
}

#[async_trait]
impl PreTlsProcess for WatchBeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let timeout = self.settings.load().limits.client_header_timeout;
        self.deadlines.watch(stream.id(), timeout);
        Ok(())
    }
}

/// Gives the connection's slot back however the connection ends, even when its task never
/// runs.
struct OpenGuard<A> {
    app: Arc<CountedApp<A>>,
}

impl<A> Drop for OpenGuard<A> {
    fn drop(&mut self) {
        self.app.open.fetch_sub(1, Ordering::AcqRel);
        metrics::get()
            .open_connections
            .with_label_values(&[self.app.listener.as_str()])
            .dec();
    }
}

/// What one HTTP/1 connection carries from one request to the next. It sits in every idle
/// connection's task, so what is rarely there is boxed: 24 bytes instead of 120.
struct KeepAlive {
    /// Whether no request has been read yet.
    fresh: bool,
    /// Bytes of the next request that came with the previous one (pipelining).
    pending: Option<Box<BytesMut>>,
    /// What pingora's last request on the connection left for the next one.
    persistent: Option<Box<HttpPersistentSettings>>,
}

impl<A: HttpServerApp + Send + Sync + 'static> CountedApp<A> {
    /// Serves HTTP/1.x requests on one connection until it closes or idles out.
    ///
    /// Between requests the connection is only this loop's small state; everything a
    /// request needs is allocated for that request alone (`serve_request`, boxed).
    ///
    /// This is the whole task of most connections, so it owns what it needs rather than
    /// borrowing it from a caller's frame that would sit beside it for the connection's life.
    async fn serve_http1(slot: OpenGuard<A>, mut stream: Stream, mut shutdown: ShutdownWatch) {
        let this = &slot.app;
        let accepted = accepted_at(&stream);
        // This loop holds the first request to the deadline from here on, with a 408; a
        // TLS connection's watch (its handshake) is done.
        if stream.get_ssl_digest().is_some() {
            if let Some(cookie) = socket_cookie(&stream) {
                this.deadlines.head_arrived(cookie);
            }
        }
        let mut state = KeepAlive {
            fresh: true,
            pending: None,
            persistent: None,
        };
        loop {
            let first = if let Some(next) = state.pending.take() {
                Some(*next)
            } else if state.fresh {
                let deadline = accepted + this.settings.load().limits.client_header_timeout;
                wait_for_first_request(&mut stream, deadline, &mut shutdown).await
            } else {
                let idle = Duration::from_secs(this.settings.load().limits.keepalive_secs);
                wait_for_request(&mut stream, idle, &mut shutdown).await
            };
            let Some(first) = first else {
                return;
            };
            let served =
                Box::pin(this.serve_request(stream, first, &mut state, accepted, &shutdown));
            match served.await {
                Some(next) => stream = next,
                None => return,
            }
        }
    }

    /// Reads and answers the request whose first bytes are `first`; the connection back
    /// when it may carry another.
    async fn serve_request(
        &self,
        mut stream: Stream,
        first: BytesMut,
        state: &mut KeepAlive,
        accepted: Instant,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let keepalive_request_limit = self
            .inner
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        let limits = self.settings.load().limits;
        let deadline = if state.fresh {
            accepted + limits.client_header_timeout
        } else {
            Instant::now() + limits.client_header_timeout
        };
        let longest = limits.max_uri_length + limits.max_header_size + HEAD_LINE_SLACK;
        let mut head = match read_head(&mut stream, first, deadline, longest).await {
            HeadRead::Complete(head) => head,
            HeadRead::Closed => return None,
            HeadRead::TimedOut => {
                self.refuse(&mut stream, HEADER_TIMEOUT, REQUEST_TIMEOUT)
                    .await;
                return None;
            }
            HeadRead::TooLong { line_ended } => {
                let (reason, answer) = if line_ended {
                    ("headers_too_large", HEADERS_TOO_LARGE)
                } else {
                    ("uri_too_long", URI_TOO_LONG)
                };
                self.refuse(&mut stream, reason, answer).await;
                return None;
            }
        };
        state.fresh = false;
        // What follows a head without a body is the next request: kept for it, since
        // pingora would take it for this one's body and drop it. After a head that
        // announces a body, everything goes to pingora, which frames it.
        let mut searched = 0;
        if let Some(end) = head_end(&head, &mut searched) {
            if end < head.len() && !announces_body(&head[..end]) {
                state.pending = Some(Box::new(head.split_off(end)));
            }
        }
        // pingora counts keep-alive reuses per connection; with a limit set, every
        // request goes its way.
        if let (Some(fast), None) = (&self.fast_hits, keepalive_request_limit) {
            if !*shutdown.borrow() {
                match fast.answer(&mut stream, &head).await {
                    Answered::Done => return Some(stream),
                    Answered::Failed => return None,
                    Answered::No => {}
                }
            }
        }
        let mut session = ServerSession::new_http1(RequestBuffered::wrap(stream));
        match state.persistent.take() {
            Some(settings) => HttpPersistentSettings::apply_to_session(*settings, &mut session),
            None => {
                let idle = limits.keepalive_secs;
                let keepalive = (!*shutdown.borrow()).then_some(idle);
                session.set_keepalive(keepalive);
                session.set_keepalive_reuses_remaining(keepalive_request_limit);
            }
        }
        if let ServerSession::H1(h1) = &mut session {
            h1.set_pipelined_prefix(head);
        }
        let reused = self.inner.process_new_http(session, shutdown).await?;
        let (next, settings) = reused.consume();
        state.persistent = settings.map(Box::new);
        RequestBuffered::unwrap(next).await
    }
}

impl<A> CountedApp<A> {
    /// Answers a request refused before it was parsed, and counts it.
    async fn refuse(&self, stream: &mut Stream, reason: &str, answer: &[u8]) {
        metrics::get()
            .rejected_requests
            .with_label_values(&[self.listener.as_str(), reason])
            .inc();
        // A client that does not read cannot hold the connection open through this write.
        let _ = tokio::time::timeout(ANSWER_WRITE_TIMEOUT, async {
            stream.write_all(answer).await?;
            stream.flush().await
        })
        .await;
    }
}

/// When `stream`'s connection was accepted (its TCP layer's establishment), as an instant.
fn accepted_at(stream: &Stream) -> Instant {
    let now = Instant::now();
    let established = stream
        .get_timing_digest()
        .first()
        .and_then(|d| d.as_ref().map(|d| d.established_ts));
    let age = established
        .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
        .unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

/// Whether a plain connection opens with HTTP/2's preface, looked at without consuming it:
/// four bytes first (an HTTP/1 request may be shorter than the preface), then, when they
/// are `PRI `, the whole preface, so an HTTP/1 request with a `PRI` method still gets our
/// keep-alive loop and its deadlines. `None` when the bytes do not arrive by `deadline`.
async fn opens_with_h2_preface(stream: &mut Stream, deadline: Instant) -> Option<bool> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut start = [0u8; 4];
    match tokio::time::timeout_at(deadline, stream.try_peek(&mut start)).await {
        Ok(Ok(true)) if &start == b"PRI " => {}
        Ok(Ok(true)) => return Some(false),
        // A stream that cannot peek is left to pingora to tell.
        Ok(Ok(false)) => return Some(true),
        Ok(Err(_)) | Err(_) => return None,
    }
    let mut whole = [0u8; 24];
    match tokio::time::timeout_at(deadline, stream.try_peek(&mut whole)).await {
        Ok(Ok(peeked)) => Some(!peeked || &whole == PREFACE),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// The kernel's cookie for the socket under `stream`.
fn socket_cookie(stream: &Stream) -> Option<u64> {
    stream.get_socket_digest()?.socket_cookie().ok()
}

/// What the request line and the end of the head may add to the configured limits.
const HEAD_LINE_SLACK: usize = 64;
/// How long an answer to a refused head may take to write.
const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n408 request timeout\n";
const HEADERS_TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 32\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nrequest header fields too large\n";
const URI_TOO_LONG: &[u8] = b"HTTP/1.1 414 URI Too Long\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nrequest target too long\n";

/// How reading one request head ended.
#[derive(Debug, PartialEq, Eq)]
enum HeadRead {
    /// The head through its blank line, and whatever followed it in the same reads.
    Complete(BytesMut),
    /// The client closed first.
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// Longer than any head the limits allow; `line_ended` tells whether the request line
    /// was complete (then the header fields are too large, else the target is too long).
    TooLong { line_ended: bool },
}

/// Reads until `buf` holds a whole request head, by `deadline` and within `longest` bytes.
async fn read_head<S>(
    stream: &mut S,
    mut buf: BytesMut,
    deadline: Instant,
    longest: usize,
) -> HeadRead
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut searched = 0;
    loop {
        if head_end(&buf, &mut searched).is_some() {
            return HeadRead::Complete(buf);
        }
        if buf.len() > longest {
            let line_ended = buf
                .iter()
                .skip_while(|b| matches!(b, b'\r' | b'\n'))
                .any(|b| *b == b'\n');
            return HeadRead::TooLong { line_ended };
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Closed,
            Ok(Ok(_)) => {}
            Err(_) => return HeadRead::TimedOut,
        }
    }
}

/// Where the head in `buf` ends (just past its blank line), if it does. Empty lines before
/// the request line are skipped, as RFC 9112 §2.2 allows. `searched` remembers how far a
/// previous call looked, so a head that arrives byte by byte is scanned once.
fn head_end(buf: &[u8], searched: &mut usize) -> Option<usize> {
    let start = buf.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let from = (*searched).max(start);
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // A line feed that follows another, with at most a carriage return between.
            let before = &buf[start..i];
            if before.ends_with(b"\n") || before.ends_with(b"\n\r") {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    *searched = buf.len();
    None
}

/// Whether a request head has a `Content-Length`, `Transfer-Encoding` or `Upgrade` field,
/// whatever its value: then the bytes after it are pingora's (a body to frame, or the
/// upgraded protocol's first bytes).
fn announces_body(head: &[u8]) -> bool {
    head.split(|b| *b == b'\n').skip(1).any(|line| {
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        let name = name.trim_ascii();
        [&b"content-length"[..], b"transfer-encoding", b"upgrade"]
            .iter()
            .any(|field| name.eq_ignore_ascii_case(field))
    })
}

/// How many bytes the read that finds a new request takes at most: an ordinary head whole.
/// Reading a single byte first, to learn that a request has begun, would cost every request
/// a second read (a second system call on plain TCP).
const ARRIVAL_READ: usize = 4096;

/// Reads what has arrived of the next request, once anything has; empty when the client
/// closed. The read's buffer is on the stack only while the read is polled: the future that
/// waits holds none of it, so neither does an idle connection.
async fn read_arrival<S>(stream: &mut S) -> std::io::Result<BytesMut>
where
    S: tokio::io::AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        let mut chunk = [0u8; ARRIVAL_READ];
        let mut arrived = tokio::io::ReadBuf::new(&mut chunk);
        std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut arrived))?;
        std::task::Poll::Ready(Ok(BytesMut::from(arrived.filled())))
    })
    .await
}

/// The first bytes of a request from a wait's read; `None` for a close, an error or the end
/// of the wait.
fn arrived<E>(read: Result<std::io::Result<BytesMut>, E>) -> Option<BytesMut> {
    match read {
        Ok(Ok(first)) if !first.is_empty() => Some(first),
        _ => None,
    }
}

/// How long a connection accepted just before a shutdown (or a graceful upgrade's handover)
/// waits for its first request. Its client has sent or is sending one and has nowhere to
/// retry it, unlike a kept-alive connection's client.
const FIRST_REQUEST_WAIT_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// Waits for the first bytes of a new connection's first request, until `deadline`; a
/// shutdown only shortens the wait.
async fn wait_for_first_request<S>(
    stream: &mut S,
    deadline: Instant,
    shutdown: &mut ShutdownWatch,
) -> Option<BytesMut>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let shortened = |deadline: tokio::time::Instant| {
        deadline.min(tokio::time::Instant::now() + FIRST_REQUEST_WAIT_AT_SHUTDOWN)
    };
    let mut watching = !*shutdown.borrow();
    let mut deadline = if watching {
        deadline
    } else {
        shortened(deadline)
    };
    let read = loop {
        tokio::select! {
            biased;
            read = tokio::time::timeout_at(deadline, read_arrival(stream)) => break read,
            _ = shutdown.changed(), if watching => {
                watching = false;
                deadline = shortened(deadline);
            }
        }
    };
    arrived(read)
}

/// Waits, in a small future, for the first bytes of the next request. `None` when the
/// client closes, stays idle past `idle`, or the server is shutting down.
async fn wait_for_request<S>(
    stream: &mut S,
    idle: Duration,
    shutdown: &mut ShutdownWatch,
) -> Option<BytesMut>
where
    S: tokio::io::AsyncRead + Unpin,
{
    if *shutdown.borrow() {
        return None;
    }
    let read = tokio::select! {
        // A request that has arrived wins over a shutdown that arrives with it.
        biased;
        read = tokio::time::timeout(idle, read_arrival(stream)) => read,
        _ = shutdown.changed() => return None,
    };
    arrived(read)
}

impl<A: HttpServerApp + Send + Sync + 'static> CountedApp<A> {
    /// The protocol `session` speaks, as far as is known before reading from it: HTTP/1
    /// (`Some(true)`) when TLS chose it or chose nothing, or when the listener takes no h2c;
    /// HTTP/2 (`Some(false)`) when TLS chose it; `None` for a plain connection on an h2c
    /// listener, which is HTTP/2 if it opens with the preface.
    fn speaks_http1(&self, session: &Stream) -> Option<bool> {
        let h2c = self
            .inner
            .server_options()
            .is_some_and(|o| o.h2c || o.force_custom);
        let tls = session.get_ssl_digest().is_some();
        match session.selected_alpn_proto() {
            None | Some(ALPN::H1) if tls || !h2c => Some(true),
            None | Some(ALPN::H1) => None,
            Some(_) => Some(false),
        }
    }

    /// Serves a connection that is not plainly HTTP/1, in the task `process_new` spawns:
    /// HTTP/2 by ALPN, or (`h2c_or_http1`) a plain connection on an h2c listener.
    async fn serve_other(
        slot: OpenGuard<A>,
        mut session: Stream,
        shutdown: ShutdownWatch,
        h2c_or_http1: bool,
    ) {
        let accepted = accepted_at(&session);
        let tls = session.get_ssl_digest().is_some();
        if h2c_or_http1 {
            let deadline = accepted + slot.app.settings.load().limits.client_header_timeout;
            match opens_with_h2_preface(&mut session, deadline).await {
                Some(true) => {}
                Some(false) => return Self::serve_http1(slot, session, shutdown).await,
                None => {
                    metrics::get()
                        .rejected_requests
                        .with_label_values(&[slot.app.listener.as_str(), HEADER_TIMEOUT])
                        .inc();
                    return;
                }
            }
        }
        let this = &slot.app;
        // A TLS connection's clock started before its handshake.
        if !tls {
            let deadline = accepted + this.settings.load().limits.client_header_timeout;
            let left = deadline.saturating_duration_since(Instant::now());
            this.deadlines.watch(session.id(), left);
        }
        this.serve_h2(session, shutdown).await;
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for CountedApp<A> {
    /// Admits a connection and moves it to a task of its own. Pingora's listener runs each
    /// connection in a task whose future holds the TLS handshake's state inline, several
    /// KiB, for the connection's whole life; the task spawned here holds only what serving
    /// needs, so an idle keep-alive connection costs what its wait costs.
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let m = metrics::get();
        let limit = self.settings.load().limits.max_connections;
        if self.open.fetch_add(1, Ordering::AcqRel) >= limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            m.connections_refused
                .with_label_values(&[self.listener.as_str()])
                .inc();
            return None;
        }
        m.connections
            .with_label_values(&[self.listener.as_str()])
            .inc();
        m.open_connections
            .with_label_values(&[self.listener.as_str()])
            .inc();
        let slot = OpenGuard {
            app: Arc::clone(self),
        };
        let shutdown = shutdown.clone();
        match self.speaks_http1(&session) {
            Some(true) => tokio::spawn(Self::serve_http1(slot, session, shutdown)),
            known => tokio::spawn(Self::serve_other(slot, session, shutdown, known.is_none())),
        };
        None
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests;
