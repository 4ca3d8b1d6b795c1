//! A deadline for the start of every connection: the TLS handshake (if any) and the first
//! request head must arrive within `limits.client_header_timeout` of the accept.
//!
//! Without it a client that sends a byte now and then holds its connection for ever: the
//! per-read timeouts restart at every byte, and `limits.max_connections` such clients lock
//! everyone else out of a listener. HTTP/1.x requests on our own keep-alive loop have their
//! heads read with a deadline in `connections.rs`; this covers what happens inside pingora
//! before the first request reaches the proxy: the TLS handshake, the HTTP/2 preface and the
//! first HTTP/2 stream's headers, and HTTP/1 on an h2c listener.
//!
//! A connection is registered by its kernel socket cookie (unique while the system runs,
//! unlike a file descriptor number) when it is accepted. The proxy reports each request head
//! that arrives; a connection still waiting at its deadline has its socket shut down, which
//! ends whatever pingora was reading from it. The descriptor is checked to still be that
//! socket before it is shut down, since a connection that ended early frees its number.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pingora::protocols::l4::ext::get_socket_cookie;
use tokio::sync::oneshot;

use crate::metrics;

/// The deadlines of one listener's connections.
pub struct HeadDeadlines {
    listener: String,
    /// Connections whose first request head has not arrived, by socket cookie; the sender
    /// ends the connection's watch early.
    pending: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl HeadDeadlines {
    pub fn new(listener: &str) -> Arc<Self> {
        Arc::new(HeadDeadlines {
            listener: listener.to_string(),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the clock for the connection on `fd`, accepted just now.
    pub fn watch(self: &Arc<Self>, fd: RawFd, timeout: Duration) {
        let Ok(cookie) = get_socket_cookie(fd) else {
            return;
        };
        let (arrived, wait) = oneshot::channel();
        self.pending.lock().insert(cookie, arrived);
        let deadlines = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A head arrived (the sender was used) or the entry was replaced.
                _ = wait => return,
                _ = tokio::time::sleep(timeout) => {}
            }
            deadlines.expire(fd, cookie);
        });
    }

    /// A request head arrived on the socket with this cookie: its deadline is met.
    pub fn head_arrived(&self, cookie: u64) {
        let arrived = self.pending.lock().remove(&cookie);
        if let Some(arrived) = arrived {
            let _ = arrived.send(());
        }
    }

    /// Whether any connection is still waiting for its first head (lets callers skip the
    /// lock in the common case).
    pub fn any_pending(&self) -> bool {
        !self.pending.lock().is_empty()
    }

    fn expire(&self, fd: RawFd, cookie: u64) {
        if self.pending.lock().remove(&cookie).is_none() {
            return;
        }
        // The connection may have ended and its descriptor gone to another socket.
        if get_socket_cookie(fd).ok() != Some(cookie) {
            return;
        }
        tracing::info!(listener = %self.listener, "closing a connection whose first request did not arrive within client_header_timeout");
        metrics::get()
            .rejected_requests
            .with_label_values(&[self.listener.as_str(), HEADER_TIMEOUT])
            .inc();
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
}

/// The `reason` label of a request whose head came too slowly.
pub const HEADER_TIMEOUT: &str = "header_timeout";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;

    /// A client socket and the server's end of it, over 127.0.0.1.
    pub(crate) async fn connected_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let client = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    const SOON: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_connection_without_a_head_is_shut_down_at_its_deadline() {
        let (mut client, server) = connected_pair().await;
        let deadlines = HeadDeadlines::new("test");
        deadlines.watch(server.as_raw_fd(), SOON);
        assert!(deadlines.any_pending());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
            .await
            .expect("closed well before 5 s");
        assert_eq!(read.expect("read"), 0, "the server side was shut down");
        assert!(!deadlines.any_pending());
        drop(server);
    }

    #[tokio::test]
    async fn a_head_in_time_keeps_the_connection() {
        let (mut client, server) = connected_pair().await;
        let deadlines = HeadDeadlines::new("test");
        deadlines.watch(server.as_raw_fd(), SOON);
        let cookie = get_socket_cookie(server.as_raw_fd()).expect("cookie");
        deadlines.head_arrived(cookie);
        assert!(!deadlines.any_pending());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(200), client.read(&mut byte)).await;
        assert!(read.is_err(), "still open: {read:?}");
        drop(server);
    }

    #[tokio::test]
    async fn a_descriptor_reused_by_another_socket_is_left_alone() {
        let (client, server) = connected_pair().await;
        let deadlines = HeadDeadlines::new("test");
        let fd = server.as_raw_fd();
        let cookie = get_socket_cookie(fd).expect("cookie");
        deadlines
            .pending
            .lock()
            .insert(cookie + 1, oneshot::channel().0);
        // The entry names another socket than the one now on `fd`.
        deadlines.expire(fd, cookie + 1);
        let mut client = client;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), client.read(&mut byte)).await;
        assert!(
            read.is_err(),
            "the socket on the descriptor was not shut down"
        );
        assert!(!deadlines.any_pending());
        drop(server);
    }
}
