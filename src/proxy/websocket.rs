//! Websockets end cleanly when the edge shuts down or hands over to a new binary.
//!
//! Pingora carries an upgraded connection as raw bytes and, at shutdown, drops it without a
//! word, so clients see a broken connection. Instead, the connection to the streaming server
//! is wrapped: when the server begins a graceful shutdown (SIGTERM, or SIGQUIT for an
//! upgrade), the wrapper waits for the end of the frame the streaming server is sending,
//! then hands pingora a close frame with status 1001 ("going away") followed by the end of
//! the stream, as if the streaming server had said it. Pingora passes both to the client
//! and ends the exchange; clients reconnect (to the new process, or another PoP).
//!
//! The wrapper reads the streaming server's byte stream just enough to know where frames
//! end: the HTTP response head first (only a `101` response is followed by frames), then
//! each frame's header and payload length. It never buffers or changes a byte.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::server::ShutdownWatch;
use pingora::{Error, ErrorType};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::metrics;
use crate::upstream::mesh::{MeshConnector, OpenedStream};

/// A close frame from a server (unmasked): FIN + opcode 8, 2 bytes of payload, 1001.
const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Pool key for connections carrying websockets, so a pooled plain connection is never
/// used for one (it would lack the wrapper) and a wrapped one never for a plain request.
pub const WEBSOCKET_POOL: u64 = 0x7773_676f_6177_6179;

/// Tells every open websocket that the edge is going away.
pub struct GoingAway {
    sender: watch::Sender<bool>,
}

impl GoingAway {
    pub fn new() -> Arc<Self> {
        Arc::new(GoingAway {
            sender: watch::Sender::new(false),
        })
    }

    /// A connector for one websocket's connection to `address`'s host: through the mesh
    /// when there is one, else a kernel TCP connection, wrapped either way.
    pub fn connector(
        &self,
        mesh: Option<Arc<MeshConnector>>,
        connect_timeout: Duration,
    ) -> Arc<dyn L4Connect + Send + Sync> {
        Arc::new(WebsocketConnector {
            mesh,
            connect_timeout,
            going_away: self.sender.subscribe(),
        })
    }
}

/// Runs for the server's life: at the start of a graceful shutdown, signals the websockets.
pub struct GoingAwayService(pub Arc<GoingAway>);

#[async_trait]
impl pingora::services::background::BackgroundService for GoingAwayService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.wait_for(|going| *going).await.is_err() {
            return;
        }
        use prometheus::core::Collector;
        let open: f64 = metrics::get()
            .open_websockets
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().get_value())
            .sum();
        tracing::info!(
            open,
            "shutting down: websockets get a going-away close at their next frame boundary"
        );
        self.0.sender.send_replace(true);
    }
}

#[derive(Debug)]
struct WebsocketConnector {
    mesh: Option<Arc<MeshConnector>>,
    connect_timeout: Duration,
    going_away: watch::Receiver<bool>,
}

#[async_trait]
impl L4Connect for WebsocketConnector {
    async fn connect(&self, addr: &PeerAddr) -> pingora::Result<Stream> {
        let PeerAddr::Inet(address) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "websockets go to IP addresses");
        };
        let inner: Box<dyn VirtualSocket> = match &self.mesh {
            Some(mesh) => mesh.dial_socket(*address).await?,
            None => Box::new(kernel_connect(*address, self.connect_timeout).await?),
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(
            CloseOnShutdown::new(inner, self.going_away.clone()),
        ))))
    }
}

async fn kernel_connect(
    address: SocketAddr,
    timeout: Duration,
) -> pingora::Result<OpenedStream<TcpStream>> {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            // Messages are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            Ok(OpenedStream(stream))
        }
        Ok(Err(e)) => {
            let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                ErrorType::ConnectRefused
            } else {
                ErrorType::ConnectError
            };
            Error::e_because(kind, format!("connecting to {address}"), e)
        }
        Err(_) => Error::e_explain(
            ErrorType::ConnectTimedout,
            format!("no connection to {address} within {timeout:?}"),
        ),
    }
}

/// Where the server's byte stream is: in the HTTP head, between frames, or inside one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Position {
    /// Reading the response head; `tail` holds its last bytes to spot the blank line.
    Head { status_line: Vec<u8>, tail: [u8; 4] },
    /// Not a websocket after all (no 101): never touched.
    Plain,
    /// Inside a frame header: the bytes of it seen so far.
    Header(Vec<u8>),
    /// Inside a payload: bytes left.
    Payload(u64),
}

/// Follows the server's byte stream to know when it is between two frames.
#[derive(Debug)]
struct FrameTracker {
    position: Position,
}

impl FrameTracker {
    fn new() -> Self {
        FrameTracker {
            position: Position::Head {
                status_line: Vec::new(),
                tail: [0; 4],
            },
        }
    }

    fn at_frame_boundary(&self) -> bool {
        matches!(&self.position, Position::Header(seen) if seen.is_empty())
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.position {
                Position::Plain => return,
                Position::Head { status_line, tail } => {
                    let byte = bytes[0];
                    bytes = &bytes[1..];
                    if !status_line.ends_with(b"\n") && status_line.len() < 64 {
                        status_line.push(byte);
                    }
                    tail.rotate_left(1);
                    tail[3] = byte;
                    if *tail == *b"\r\n\r\n" {
                        self.position = if status_line.starts_with(b"HTTP/1.1 101") {
                            Position::Header(Vec::new())
                        } else {
                            Position::Plain
                        };
                    }
                }
                Position::Header(seen) => {
                    seen.push(bytes[0]);
                    bytes = &bytes[1..];
                    if let Some(payload) = header_complete(seen) {
                        self.position = if payload == 0 {
                            Position::Header(Vec::new())
                        } else {
                            Position::Payload(payload)
                        };
                    }
                }
                Position::Payload(left) => {
                    let take = (*left).min(bytes.len() as u64);
                    *left -= take;
                    bytes = &bytes[take as usize..];
                    if *left == 0 {
                        self.position = Position::Header(Vec::new());
                    }
                }
            }
        }
    }
}

/// The payload length once `header` holds a whole frame header (RFC 6455 section 5.2).
fn header_complete(header: &[u8]) -> Option<u64> {
    let second = *header.get(1)?;
    let masked = second & 0x80 != 0;
    let (length_bytes, short) = match second & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let needed = 2 + length_bytes + if masked { 4 } else { 0 };
    if header.len() < needed {
        return None;
    }
    let payload = match short {
        Some(n) => n,
        None => header[2..2 + length_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
    };
    Some(payload)
}

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The connection to the streaming server, ending with a going-away close at shutdown.
struct CloseOnShutdown {
    inner: Box<dyn VirtualSocket>,
    frames: FrameTracker,
    /// Completes when the edge is going away. In a mutex only so the socket is `Sync`;
    /// polling goes through `get_mut`, never the lock.
    going_away: parking_lot::Mutex<Signal>,
    /// Bytes of the close frame handed out so far; `None` until going away.
    closing: Option<usize>,
}

impl std::fmt::Debug for CloseOnShutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseOnShutdown")
            .field("inner", &self.inner)
            .field("frames", &self.frames)
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl CloseOnShutdown {
    fn new(inner: Box<dyn VirtualSocket>, mut going_away: watch::Receiver<bool>) -> Self {
        let signal: Signal = Box::pin(async move {
            if going_away.wait_for(|going| *going).await.is_err() {
                // The sender lives as long as the server; without it, never go away.
                std::future::pending::<()>().await;
            }
        });
        CloseOnShutdown {
            inner,
            frames: FrameTracker::new(),
            going_away: parking_lot::Mutex::new(signal),
            closing: None,
        }
    }

    fn going_away_now(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.frames.at_frame_boundary() {
            return false;
        }
        self.going_away.get_mut().as_mut().poll(cx).is_ready()
    }
}

impl VirtualSocket for CloseOnShutdown {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        self.inner.set_socket_option(opt)
    }
}

impl AsyncRead for CloseOnShutdown {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing.is_none() && this.going_away_now(cx) {
            this.closing = Some(0);
            metrics::get().websockets_closed_going_away.inc();
        }
        if let Some(sent) = this.closing {
            // The close frame, then the end of the stream.
            let rest = &GOING_AWAY[sent..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.closing = Some(sent + n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.frames.feed(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for CloseOnShutdown {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut out = vec![0x82];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => out.push(mask_bit | payload_len as u8),
            126..=65535 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(0x5A, payload_len));
        out
    }

    /// Feeds `stream` in pieces of `step` bytes and records after which byte counts the
    /// tracker says it is between frames.
    fn boundaries(stream: &[u8], step: usize) -> Vec<usize> {
        let mut tracker = FrameTracker::new();
        let mut seen = Vec::new();
        let mut fed = 0;
        for piece in stream.chunks(step) {
            tracker.feed(piece);
            fed += piece.len();
            if tracker.at_frame_boundary() {
                seen.push(fed);
            }
        }
        seen
    }

    #[test]
    fn frame_ends_are_found_however_the_bytes_arrive() {
        let frames = [
            frame(0, false),
            frame(5, false),
            frame(126, false),
            frame(70_000, false),
            frame(3, true),
        ];
        let mut stream = HEAD.to_vec();
        let mut ends = vec![HEAD.len()];
        for f in &frames {
            stream.extend_from_slice(f);
            ends.push(stream.len());
        }
        // One byte at a time: every frame end is seen, and nothing else.
        assert_eq!(boundaries(&stream, 1), ends);
        // Any chunking: the boundaries seen are frame ends, and the last one is the end.
        for step in [2, 3, 7, 64, 1000, 100_000] {
            let seen = boundaries(&stream, step);
            assert!(seen.iter().all(|b| ends.contains(b)), "step {step}");
            assert_eq!(seen.last(), Some(&stream.len()), "step {step}");
        }
    }

    #[test]
    fn a_response_that_is_not_101_is_never_touched() {
        let mut tracker = FrameTracker::new();
        tracker.feed(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno");
        assert_eq!(tracker.position, Position::Plain);
        assert!(!tracker.at_frame_boundary());
    }

    #[test]
    fn inside_the_head_or_a_frame_is_not_a_boundary() {
        let mut tracker = FrameTracker::new();
        tracker.feed(&HEAD[..HEAD.len() - 1]);
        assert!(!tracker.at_frame_boundary());
        tracker.feed(&HEAD[HEAD.len() - 1..]);
        assert!(tracker.at_frame_boundary());
        let f = frame(10, false);
        tracker.feed(&f[..1]);
        assert!(!tracker.at_frame_boundary());
        tracker.feed(&f[1..5]);
        assert!(!tracker.at_frame_boundary());
        tracker.feed(&f[5..]);
        assert!(tracker.at_frame_boundary());
    }
}
