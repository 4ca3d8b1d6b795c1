//! Counts and bounds client connections per listener around pingora's HTTP app.
//!
//! Pingora hands each accepted connection (after TLS, if any) to `ServerApp::process_new`
//! and keeps it there for its whole life: every keep-alive request of HTTP/1.1 and every
//! stream of HTTP/2. Wrapping that call is the one place that sees connections open and
//! close, so it is also where `limits.max_connections` is enforced: a connection beyond the
//! limit is closed at once, before any request is read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

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

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for CountedApp<A> {
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
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
