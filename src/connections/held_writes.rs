//! A connection whose writes can be held back for a moment and sent together.
//!
//! The h2 crate writes and flushes what it has queued every time its connection is
//! polled, and the accept loop polls it once per stream: a client that sends ten requests
//! at once would get ten answers in ten writes (each a system call and, over TLS, a record
//! of its own) where one would do. While `hold` is set, writes are kept here instead of
//! reaching the connection, and flushes do nothing; the accept loop sets it only while it
//! takes the streams that have already arrived, and clears it before it waits, so the
//! next poll writes everything kept in one go.
//!
//! What is kept is bounded (`MAX_HELD`): past it, writes go through as if nothing were
//! held. The buffer is given back once it is written out, so an idle connection keeps
//! nothing here.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The most bytes kept back at once.
const MAX_HELD: usize = 64 * 1024;

/// `inner` with writes held back while `hold` is set.
#[derive(Debug)]
pub(super) struct HeldWrites {
    inner: Stream,
    held: BytesMut,
    hold: Arc<AtomicBool>,
}

impl HeldWrites {
    /// `inner`, and the switch that holds its writes back.
    pub(super) fn new(inner: Stream) -> (HeldWrites, Arc<AtomicBool>) {
        let hold = Arc::new(AtomicBool::new(false));
        let stream = HeldWrites {
            inner,
            held: BytesMut::new(),
            hold: Arc::clone(&hold),
        };
        (stream, hold)
    }

    fn holding(&self) -> bool {
        self.hold.load(Ordering::Relaxed)
    }

    /// Writes out everything kept back.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(written);
        }
        // An emptied `BytesMut` keeps its allocation: let it go.
        self.held = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl Drop for HeldWrites {
    /// A connection dropped with answers still held (the client closed its side, the loop
    /// gave up on it) gets them if its socket takes them now; nothing waits for it.
    fn drop(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Ok(())) = self.poll_write_held(&mut cx) {
            let _ = Pin::new(&mut self.inner).poll_flush(&mut cx);
        }
    }
}

impl AsyncRead for HeldWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeldWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.holding() && this.held.len() + data.len() <= MAX_HELD {
            this.held.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        pieces: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        if this.holding() && this.held.len() + total <= MAX_HELD {
            for piece in pieces {
                this.held.extend_from_slice(piece);
            }
            return Poll::Ready(Ok(total));
        }
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, pieces)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.holding() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeldWrites {
    async fn shutdown(&mut self) {
        self.hold.store(false, Ordering::Relaxed);
        // What was kept back goes first; a connection that cannot take it is closing anyway.
        let _ = AsyncWriteExt::flush(self).await;
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for HeldWrites {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeldWrites {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeldWrites {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeldWrites {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeldWrites {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeldWrites {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use pingora::protocols::l4::stream::Stream as L4Stream;

    /// A connected pair: the accepted side as pingora holds it, held back, and the client.
    async fn connected() -> (HeldWrites, Arc<AtomicBool>, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut server = L4Stream::from(server);
        server.set_socket_digest(SocketDigest::from_raw_fd(server.as_raw_fd()));
        let (held, hold) = HeldWrites::new(Box::new(server));
        (held, hold, client)
    }

    /// What the client has received so far, waiting `wait` for it.
    fn received(client: &mut std::net::TcpStream, wait: Duration) -> Vec<u8> {
        client.set_read_timeout(Some(wait)).expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match client.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return got
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn held_writes_wait_for_the_first_flush_after_the_hold_and_keep_their_order() {
        let (mut stream, hold, mut client) = connected().await;
        hold.store(true, Ordering::Relaxed);
        stream.write_all(b"one ").await.expect("write");
        let pieces = [io::IoSlice::new(b"two "), io::IoSlice::new(b"three ")];
        let written = stream.write_vectored(&pieces).await.expect("write");
        assert_eq!(written, 10);
        stream.flush().await.expect("flush");
        assert!(received(&mut client, Duration::from_millis(100)).is_empty());
        hold.store(false, Ordering::Relaxed);
        stream.write_all(b"four").await.expect("write");
        stream.flush().await.expect("flush");
        assert_eq!(
            received(&mut client, Duration::from_millis(300)),
            b"one two three four"
        );
        // Nothing is kept once it is written.
        assert_eq!(stream.held.capacity(), 0);
    }

    #[tokio::test]
    async fn past_the_bound_writes_go_through_after_what_was_held() {
        let (mut stream, hold, mut client) = connected().await;
        hold.store(true, Ordering::Relaxed);
        let first = vec![1u8; MAX_HELD - 10];
        stream.write_all(&first).await.expect("write");
        stream.write_all(&[2u8; 20]).await.expect("write");
        // Both reached the client, in order, though the hold is still on.
        let got = received(&mut client, Duration::from_millis(300));
        assert_eq!(got.len(), MAX_HELD + 10);
        assert!(got[..MAX_HELD - 10].iter().all(|&b| b == 1));
        assert!(got[MAX_HELD - 10..].iter().all(|&b| b == 2));
    }

    #[tokio::test]
    async fn a_connection_dropped_with_writes_held_sends_them_if_it_can() {
        let (mut stream, hold, mut client) = connected().await;
        hold.store(true, Ordering::Relaxed);
        stream.write_all(b"late answer").await.expect("write");
        drop(stream);
        assert_eq!(
            received(&mut client, Duration::from_millis(300)),
            b"late answer"
        );
    }

    #[tokio::test]
    async fn a_shutdown_writes_what_was_held_first() {
        let (mut stream, hold, mut client) = connected().await;
        hold.store(true, Ordering::Relaxed);
        stream.write_all(b"last words").await.expect("write");
        Shutdown::shutdown(&mut stream).await;
        assert_eq!(
            received(&mut client, Duration::from_millis(300)),
            b"last words"
        );
    }
}
