//! Counts client connections per listener around pingora's HTTP app.
//!
//! Pingora hands each accepted connection (after TLS, if any) to `ServerApp::process_new`
//! and keeps it there for its whole life: every keep-alive request of HTTP/1.1 and every
//! stream of HTTP/2. Wrapping that call is the one place that sees connections open and close.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::metrics;

/// A `ServerApp` that counts the connections its inner app serves.
pub struct CountedApp<A> {
    listener: String,
    inner: Arc<A>,
}

impl<A> CountedApp<A> {
    pub fn new(listener: &str, inner: A) -> Self {
        CountedApp {
            listener: listener.to_string(),
            inner: Arc::new(inner),
        }
    }
}

/// Decrements the open-connections gauge however the connection ends.
struct OpenGuard<'a> {
    listener: &'a str,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
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
        m.connections
            .with_label_values(&[self.listener.as_str()])
            .inc();
        m.open_connections
            .with_label_values(&[self.listener.as_str()])
            .inc();
        let _guard = OpenGuard {
            listener: &self.listener,
        };
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
