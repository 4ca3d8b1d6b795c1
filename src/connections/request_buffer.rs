//! A client connection's write buffer, held only while pingora serves a request on it.
//!
//! Pingora's HTTP/1 session writes a response head and its body in separate small writes
//! and flushes when the response is done; it counts on a buffer under it to gather them
//! into few packets. Its own listener puts that buffer (1,460 bytes) in every accepted
//! socket for the connection's whole life, idle keep-alive included, where it is most of
//! what an idle connection costs. The listeners here accept sockets without it, and the
//! connection loop puts this one in front of the stream for the length of one request
//! handed to pingora, then takes it off again once the request is done and flushed.
//! Answers written by the loop itself (fast hits, refusals) go in one write each and need
//! no buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// What pingora's listener would buffer per socket: one typical segment.
pub(super) const REQUEST_WRITE_BUFFER: usize = 1460;

/// A stream with a write buffer in front of it for the length of one request.
#[derive(Debug)]
pub(super) struct RequestBuffered {
    /// `None` only once `unwrap` has taken the stream back; an `Option` so that this type
    /// can flush on drop and still give its stream up.
    writer: Option<BufWriter<Stream>>,
}

impl RequestBuffered {
    /// `stream`, whose writes now gather until flushed or until the buffer is full.
    pub(super) fn wrap(stream: Stream) -> Stream {
        Box::new(Self {
            writer: Some(BufWriter::with_capacity(REQUEST_WRITE_BUFFER, stream)),
        })
    }

    /// The stream under the buffer, once everything buffered has been written; `None` if
    /// that write fails (the connection is then of no further use). A stream that was never
    /// wrapped comes back as it is.
    pub(super) async fn unwrap(stream: Stream) -> Option<Stream> {
        if !stream.as_any().is::<Self>() {
            return Some(stream);
        }
        let mut buffered = stream.into_any().downcast::<Self>().ok()?;
        let mut writer = buffered.writer.take()?;
        // Pingora flushes at the end of every response; this only guards against losing
        // bytes if it ever did not.
        if !writer.buffer().is_empty() {
            tokio::time::timeout(FLUSH_TIMEOUT, writer.flush())
                .await
                .ok()?
                .ok()?;
        }
        Some(writer.into_inner())
    }

    fn stream(&self) -> Option<&Stream> {
        self.writer.as_ref().map(BufWriter::get_ref)
    }

    fn stream_mut(&mut self) -> Option<&mut Stream> {
        self.writer.as_mut().map(BufWriter::get_mut)
    }

    /// `poll` on the buffered writer; an error once `unwrap` has taken the stream back.
    fn poll_writer<T>(
        self: Pin<&mut Self>,
        poll: impl FnOnce(Pin<&mut BufWriter<Stream>>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match &mut self.get_mut().writer {
            Some(writer) => poll(Pin::new(writer)),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the stream was taken back",
            ))),
        }
    }
}

/// Pingora drops a session it will not reuse without flushing it (an upstream that fails
/// after the response head went out, say); its own socket buffer then sends what it can
/// without waiting, and so does this one.
impl Drop for RequestBuffered {
    fn drop(&mut self) {
        if let Some(writer) = &mut self.writer {
            if !writer.buffer().is_empty() {
                let _ = writer.flush().now_or_never();
            }
        }
    }
}

/// How long a leftover flush between two requests may take before the connection is
/// given up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

impl AsyncRead for RequestBuffered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_writer(|writer| writer.poll_read(cx, buf))
    }
}

impl AsyncWrite for RequestBuffered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_writer(|writer| writer.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_writer(|writer| writer.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_writer(|writer| writer.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_writer(|writer| writer.poll_shutdown(cx))
    }
}

#[async_trait]
impl Shutdown for RequestBuffered {
    async fn shutdown(&mut self) {
        if let Some(writer) = &mut self.writer {
            // What is still buffered goes out before the stream closes.
            let _ = writer.flush().await;
            Shutdown::shutdown(&mut **writer.get_mut()).await;
        }
    }
}

impl UniqueID for RequestBuffered {
    fn id(&self) -> UniqueIDType {
        self.stream().map_or(-1, |s| s.id())
    }
}

impl Ssl for RequestBuffered {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.stream()?.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.stream()?.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.stream()?.selected_alpn_proto()
    }
}

impl GetTimingDigest for RequestBuffered {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.stream()
            .map(|s| s.get_timing_digest())
            .unwrap_or_default()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.stream()
            .map(|s| s.get_read_pending_time())
            .unwrap_or_default()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.stream()
            .map(|s| s.get_write_pending_time())
            .unwrap_or_default()
    }
}

impl GetProxyDigest for RequestBuffered {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.stream()?.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        if let Some(stream) = self.stream_mut() {
            stream.set_proxy_digest(digest);
        }
    }
}

impl GetSocketDigest for RequestBuffered {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.stream()?.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        if let Some(stream) = self.stream_mut() {
            stream.set_socket_digest(digest);
        }
    }
}

#[async_trait]
impl Peek for RequestBuffered {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.stream_mut() {
            Some(stream) => stream.try_peek(buf).await,
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::tests::accepted_stream;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncReadExt;

    /// Bytes that have reached the client so far, without waiting for more.
    async fn arrived(client: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(200), client.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => return got,
            }
        }
    }

    #[tokio::test]
    async fn small_writes_gather_until_the_flush() {
        let (mut client, stream) = accepted_stream().await;
        let mut stream = RequestBuffered::wrap(stream);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        stream
            .write_all(b"Content-Length: 2\r\n\r\n")
            .await
            .expect("write");
        stream.write_all(b"ok").await.expect("write");
        assert!(
            arrived(&mut client).await.is_empty(),
            "nothing is sent before the flush"
        );
        stream.flush().await.expect("flush");
        assert_eq!(
            arrived(&mut client).await,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        );
    }

    #[tokio::test]
    async fn unwrapping_sends_what_is_still_buffered_and_leaves_no_buffer() {
        let (mut client, stream) = accepted_stream().await;
        let mut stream = RequestBuffered::wrap(stream);
        stream.write_all(b"left over").await.expect("write");
        let stream = RequestBuffered::unwrap(stream).await.expect("the stream");
        assert!(!stream.as_any().is::<RequestBuffered>());
        assert!(stream.as_any().is::<L4Stream>());
        assert_eq!(arrived(&mut client).await, b"left over");
        // A stream that was never wrapped comes back as it is.
        let stream = RequestBuffered::unwrap(stream).await.expect("the stream");
        assert!(stream.as_any().is::<L4Stream>());
    }

    /// Pingora drops a session it will not reuse without flushing it (an upstream that fails
    /// after the head was written); what the buffer holds must still reach the client, as
    /// it would from pingora's own socket buffer.
    #[tokio::test]
    async fn dropping_the_stream_sends_what_it_buffered() {
        let (mut client, stream) = accepted_stream().await;
        let mut stream = RequestBuffered::wrap(stream);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        drop(stream);
        assert_eq!(arrived(&mut client).await, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn a_large_write_passes_straight_through() {
        let (mut client, stream) = accepted_stream().await;
        let mut stream = RequestBuffered::wrap(stream);
        let body = vec![b'x'; REQUEST_WRITE_BUFFER * 2];
        stream.write_all(b"head").await.expect("write");
        stream.write_all(&body).await.expect("write");
        let got = arrived(&mut client).await;
        assert_eq!(
            got.len(),
            4 + body.len(),
            "the head goes out ahead of the body"
        );
        assert!(got.starts_with(b"head"));
    }

    #[tokio::test]
    async fn reads_and_the_connection_identity_pass_through() {
        let (mut client, stream) = accepted_stream().await;
        let id = stream.id();
        let mut stream = RequestBuffered::wrap(stream);
        assert_eq!(stream.id(), id);
        assert!(stream.get_ssl_digest().is_none());
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        let mut got = [0u8; 16];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
    }
}
