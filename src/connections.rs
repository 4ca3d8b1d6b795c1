//! Counts and bounds client connections per listener around pingora's HTTP app.
//!
//! Pingora hands each accepted connection (after TLS, if any) to `ServerApp::process_new`
//! and keeps it there for its whole life: every keep-alive request of HTTP/1.1 and every
//! stream of HTTP/2. Wrapping that call is the one place that sees connections open and
//! close, so it is also where `limits.max_connections` is enforced: a connection beyond the
//! limit is closed at once, before any request is read.
//!
//! It also runs the HTTP/1.x keep-alive loop itself, so that a connection waiting for its
//! next request waits here, in a future of a few hundred bytes, and not inside pingora's
//! request future, which is allocated whole for as long as it waits (tens of KiB per idle
//! connection). The first byte of each request is read here and handed to the request
//! parser; everything else (HTTP/2, custom protocols) goes to pingora's own loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::ALPN;
use tokio::io::AsyncReadExt;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::metrics;
use crate::proxy::ProxySettings;

/// A `ServerApp` that counts and bounds the connections its inner app serves.
pub struct CountedApp<A> {
    listener: String,
    inner: Arc<A>,
    open: AtomicUsize,
    /// Read for every new connection, so a reload changes the limit.
    settings: Arc<ArcSwap<ProxySettings>>,
}

impl<A> CountedApp<A> {
    pub fn new(listener: &str, inner: A, settings: Arc<ArcSwap<ProxySettings>>) -> Self {
        CountedApp {
            listener: listener.to_string(),
            inner: Arc::new(inner),
            open: AtomicUsize::new(0),
            settings,
        }
    }
}

/// Gives the connection's slot back however the connection ends.
struct OpenGuard<'a> {
    listener: &'a str,
    open: &'a AtomicUsize,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        metrics::get()
            .open_connections
            .with_label_values(&[self.listener])
            .dec();
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> CountedApp<A> {
    /// Serves HTTP/1.x requests on one connection until it closes or idles out.
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let keepalive_request_limit = self
            .inner
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        let mut persistent = None;
        let mut fresh = true;
        loop {
            let idle = Duration::from_secs(self.settings.load().limits.keepalive_secs);
            let first = if fresh {
                wait_for_first_request(&mut stream, idle, shutdown).await
            } else {
                wait_for_request(&mut stream, idle, shutdown).await
            };
            let Some(first) = first else {
                return;
            };
            fresh = false;
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(settings) => {
                    pingora::apps::HttpPersistentSettings::apply_to_session(settings, &mut session)
                }
                None => {
                    let keepalive = (!*shutdown.borrow()).then_some(idle.as_secs());
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(keepalive_request_limit);
                }
            }
            if let ServerSession::H1(h1) = &mut session {
                h1.set_pipelined_prefix(first);
            }
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            persistent = settings;
        }
    }
}

/// How long a connection accepted just before a shutdown (or a graceful upgrade's handover)
/// waits for its first request. Its client has sent or is sending one and has nowhere to
/// retry it, unlike a kept-alive connection's client.
const FIRST_REQUEST_WAIT_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// Waits for the first byte of a new connection's first request; a shutdown only shortens
/// the wait.
async fn wait_for_first_request(
    stream: &mut Stream,
    idle: Duration,
    shutdown: &ShutdownWatch,
) -> Option<BytesMut> {
    let mut byte = [0u8; 1];
    let mut shutdown = shutdown.clone();
    let deadline = tokio::time::Instant::now() + idle;
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
            read = tokio::time::timeout_at(deadline, stream.read(&mut byte)) => break read,
            _ = shutdown.changed(), if watching => {
                watching = false;
                deadline = shortened(deadline);
            }
        }
    };
    match read {
        Ok(Ok(1)) => Some(BytesMut::from(&byte[..])),
        _ => None,
    }
}

/// Waits, in a small future, for the first byte of the next request. `None` when the client
/// closes, stays idle past `idle`, or the server is shutting down.
async fn wait_for_request(
    stream: &mut Stream,
    idle: Duration,
    shutdown: &ShutdownWatch,
) -> Option<BytesMut> {
    if *shutdown.borrow() {
        return None;
    }
    let mut byte = [0u8; 1];
    let mut shutdown = shutdown.clone();
    let read = tokio::select! {
        // A request that has arrived wins over a shutdown that arrives with it.
        biased;
        read = tokio::time::timeout(idle, stream.read(&mut byte)) => read,
        _ = shutdown.changed() => return None,
    };
    match read {
        Ok(Ok(1)) => Some(BytesMut::from(&byte[..])),
        _ => None,
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for CountedApp<A> {
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
        let _guard = OpenGuard {
            listener: &self.listener,
            open: &self.open,
        };
        let h2c = self
            .inner
            .server_options()
            .is_some_and(|o| o.h2c || o.force_custom);
        let http1 = match session.selected_alpn_proto() {
            None | Some(ALPN::H1) => session.get_ssl_digest().is_some() || !h2c,
            Some(_) => false,
        };
        if http1 {
            self.serve_http1(session, shutdown).await;
            None
        } else {
            ServerApp::process_new(&self.inner, session, shutdown).await
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}
