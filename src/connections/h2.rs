//! HTTP/2 connections: the handshake and the loop that accepts streams, run here rather
//! than in pingora's listener so that a stream asking for a recorded plain hit is answered
//! in the loop itself (`FastHits::answer_h2`). Its answer is queued on the connection and
//! written with whatever else is ready, without a task, a request for pingora or a flush of
//! its own. Every other stream is handed to pingora's request path in a task of its own, as
//! pingora's listener does.
//!
//! The loop keeps pingora's connection rules: a shutdown sends `GOAWAY` and drains the
//! streams already opened; a connection with no stream in progress for the idle timeout
//! (`h2_idle_timeout`) is closed; a client that opens too many malformed streams loses the
//! connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::held_writes::HeldWrites;
use super::CountedApp;
use crate::proxy::fast_hits::Answered;

/// Streams refused as malformed (a bad target, ambiguous framing, a bad authority) after
/// which the connection is closed: pingora's own bound.
const MAX_REFUSED_STREAMS: usize = 32;

/// The streams of one connection that pingora's path is serving.
struct InProgress {
    count: AtomicUsize,
    none_left: Notify,
}

/// One stream in pingora's path; dropped when its task ends.
struct StreamInProgress(Arc<InProgress>);

impl Drop for StreamInProgress {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_one();
        }
    }
}

impl InProgress {
    fn start(self: &Arc<Self>) -> StreamInProgress {
        self.count.fetch_add(1, Ordering::AcqRel);
        StreamInProgress(Arc::clone(self))
    }

    /// Returns once no stream has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        while self.count.load(Ordering::Acquire) != 0 {
            self.none_left.notified().await;
        }
        tokio::time::sleep(idle).await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> CountedApp<A> {
    /// Serves one HTTP/2 connection until it closes.
    pub(super) async fn serve_h2(self: &Arc<Self>, stream: Stream, mut shutdown: ShutdownWatch) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let tls = digest.ssl_digest.is_some();
        let cookie = digest
            .socket_digest
            .as_ref()
            .and_then(|s| s.socket_cookie().ok());
        let (stream, hold) = HeldWrites::new(stream);
        let mut connection = match handshake(Box::new(stream), self.inner.h2_options()).await {
            Ok(connection) => connection,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
        };
        let idle_timeout = self.inner.server_options().and_then(|o| o.h2_idle_timeout);
        let in_progress = Arc::new(InProgress {
            count: AtomicUsize::new(0),
            none_left: Notify::new(),
        });
        let mut draining = false;
        let mut refused = 0;
        let mut first = true;
        // Whether the last poll gave a stream, so that others may have arrived with it.
        let mut more_may_be_ready = false;
        loop {
            let next = if draining {
                HttpSession::from_h2_conn(&mut connection, digest.clone()).await
            } else if std::mem::take(&mut more_may_be_ready) {
                // Take a stream that has already arrived without writing the answers queued
                // so far; when none has, the poll below writes them all at once.
                hold.store(true, Ordering::Relaxed);
                let arrived =
                    HttpSession::from_h2_conn(&mut connection, digest.clone()).now_or_never();
                hold.store(false, Ordering::Relaxed);
                match arrived {
                    Some(next) => next,
                    None => continue,
                }
            } else {
                tokio::select! {
                    // The signal first, so that one arriving with a stream is not missed;
                    // accepting is cancel-safe and is simply polled again.
                    biased;
                    _ = shutdown.changed() => {
                        connection.graceful_shutdown();
                        draining = true;
                        continue;
                    }
                    next = HttpSession::from_h2_conn(&mut connection, digest.clone()) => next,
                    _ = in_progress.idle_for(idle_timeout.unwrap_or_default()), if idle_timeout.is_some() => {
                        return;
                    }
                }
            };
            more_may_be_ready = true;
            let mut session = match next {
                // Clients often close the socket without ending HTTP/2 first: not logged.
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                    return;
                }
                Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    refused += 1;
                    if refused >= MAX_REFUSED_STREAMS {
                        tracing::warn!(
                            listener = %self.listener,
                            "closing an HTTP/2 connection after {refused} malformed streams"
                        );
                        return;
                    }
                    continue;
                }
                Ok(Some(H2Accept::Session(session))) => session,
            };
            // A request head arrived: the connection has met its first-request deadline.
            if std::mem::take(&mut first) {
                if let Some(cookie) = cookie {
                    self.deadlines.head_arrived(cookie);
                }
            }
            if let Some(fast_hits) = &self.fast_hits {
                match fast_hits.answer_h2(&mut session, tls) {
                    // A stream that failed is the stream's alone: the others go on.
                    Answered::Done | Answered::Failed => continue,
                    Answered::No => {}
                }
            }
            let stream_in_progress = in_progress.start();
            let inner = Arc::clone(&self.inner);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _in_progress = stream_in_progress;
                inner
                    .process_new_http(ServerSession::new_http2(session), &shutdown)
                    .await;
            });
        }
    }
}
