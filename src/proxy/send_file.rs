//! Answers whose body is a stretch of a file, sent with `sendfile(2)`: the kernel hands
//! the file's page-cache pages to the socket, and the body never passes through this
//! process (nginx serves its cache files the same way). Only for plain TCP connections:
//! TLS needs the bytes in the process to encrypt them.
//!
//! pingora owns the accepted socket and lends it only by descriptor number. Borrowing that
//! number for the length of a `&` borrow of the stream is the one `unsafe` block in the
//! crate; everything after it works on an owned duplicate of the descriptor (`FileSender`),
//! made before anything is written, so that failing to make it costs nothing.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Stream};
use tokio::io::{AsyncWriteExt, Interest};

/// Why a send ended early.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SendError {
    /// The file was shorter than the stretch to send: the copy is damaged.
    #[error("the body file ended early")]
    FileEndedEarly,
    /// The client went, stopped reading for the idle time, or the socket failed.
    #[error("writing the answer: {0}")]
    Client(String),
}

/// The plain TCP connection under `stream`, if that is what it is.
fn plain_tcp(stream: &Stream) -> Option<&L4Stream> {
    // `as_ref` first: the box itself is an `IO` too, and would downcast as the box.
    let plain = stream.as_ref().as_any().downcast_ref::<L4Stream>()?;
    let tcp = plain
        .get_socket_digest()
        .and_then(|digest| digest.peer_addr().map(|peer| peer.as_inet().is_some()))
        .unwrap_or(false);
    tcp.then_some(plain)
}

/// The socket of a plain connection, for as long as the connection is borrowed.
#[allow(unsafe_code)]
fn borrowed_socket(plain: &L4Stream) -> Option<BorrowedFd<'_>> {
    let fd = plain.as_raw_fd();
    if fd < 0 {
        // A virtual stream has no descriptor.
        return None;
    }
    // SAFETY: `fd` is the descriptor of the socket `plain` owns. pingora closes it only
    // when the stream is dropped, which the borrow this `BorrowedFd` is tied to prevents.
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// A plain connection's socket made ready to send files to: a duplicate of its descriptor,
/// registered with the runtime under its own number so a send can wait for room in the
/// socket buffer. Dropping it closes only the duplicate.
pub struct FileSender {
    socket: tokio::net::TcpStream,
}

impl FileSender {
    /// `None` when the connection is not plain TCP, or the duplicate cannot be made or
    /// registered (out of descriptors): nothing has been written then, so the request can
    /// still be answered another way.
    pub fn for_stream(stream: &Stream) -> Option<FileSender> {
        let duplicate = borrowed_socket(plain_tcp(stream)?)?
            .try_clone_to_owned()
            .map_err(|e| tracing::debug!(error = %e, "cannot duplicate a client socket"))
            .ok()?;
        let socket = tokio::net::TcpStream::from_std(std::net::TcpStream::from(duplicate))
            .map_err(|e| tracing::debug!(error = %e, "cannot register a client socket"))
            .ok()?;
        Some(FileSender { socket })
    }

    /// Writes `head` through the stream, then `len` bytes of `file` from `offset` with
    /// `sendfile`, each wait for the client within `idle` (a client reading slowly but
    /// steadily is not cut off). `stream` must be the one this sender was made for.
    pub async fn send(
        &self,
        stream: &mut Stream,
        head: &[u8],
        file: &File,
        offset: u64,
        len: u64,
        idle: Duration,
    ) -> Result<(), SendError> {
        let timed_out = || SendError::Client("timed out".to_string());
        tokio::time::timeout(idle, async {
            stream.write_all(head).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| SendError::Client(e.to_string()))?;
        let end = offset
            .checked_add(len)
            .and_then(|end| i64::try_from(end).ok())
            .ok_or(SendError::FileEndedEarly)?;
        let mut position = i64::try_from(offset).map_err(|_| SendError::FileEndedEarly)?;
        while position < end {
            tokio::time::timeout(idle, self.socket.writable())
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| SendError::Client(e.to_string()))?;
            // At most this much per call: reading the file may block the thread on a cold
            // page cache, as a block read does on pingora's path.
            let count = usize::try_from(end - position)
                .unwrap_or(MAX_PER_CALL)
                .min(MAX_PER_CALL);
            let sent = self.socket.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(&self.socket, file, Some(&mut position), count)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => return Err(SendError::FileEndedEarly),
                Ok(_) => {}
                // The socket buffer is full: wait for room.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.raw_os_error() == Some(Errno::EINTR as i32) => {}
                Err(e) => return Err(SendError::Client(e.to_string())),
            }
        }
        Ok(())
    }
}

/// The most one `sendfile` call is asked to send.
const MAX_PER_CALL: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::AsyncReadExt;

    /// A connected pair: the accepted side as pingora would hold it, and the client.
    async fn connected() -> (Stream, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let client = std::net::TcpStream::connect(address).expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut server = L4Stream::from(server);
        // As pingora's listener does for every connection it accepts.
        let digest = pingora::protocols::SocketDigest::from_raw_fd(server.as_raw_fd());
        server.set_socket_digest(digest);
        (Box::new(server), client)
    }

    /// Sends a one-byte head and the first `len` bytes of `file`.
    async fn send_whole(
        server: &mut Stream,
        file: &File,
        len: usize,
        idle: Duration,
    ) -> Result<(), SendError> {
        let sender = FileSender::for_stream(server).expect("a plain TCP connection");
        sender.send(server, b"H", file, 0, len as u64, idle).await
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(bytes).expect("write");
        file
    }

    #[tokio::test]
    async fn the_head_and_the_files_stretch_arrive_whole_and_the_connection_reads_on() {
        // Larger than any socket buffer, so the send waits for the reader many times.
        let body: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
        let file = file_of(&body);
        let (mut server, mut client) = connected().await;
        let sender = FileSender::for_stream(&server).expect("a plain TCP connection");
        let (offset, len) = (5u64, body.len() as u64 - 9);
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 6 + len as usize];
            client.read_exact(&mut got).expect("read");
            // The next request on the same connection.
            client.write_all(b"NEXT").expect("write");
            (got, client)
        });
        sender
            .send(
                &mut server,
                b"HEAD\r\n",
                &file,
                offset,
                len,
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
        drop(sender);
        let (got, _client) = reader.join().expect("reader");
        assert_eq!(&got[..6], b"HEAD\r\n");
        assert!(got[6..] == body[5..body.len() - 4], "the body differs");
        // The connection's own registration still wakes its reader once the duplicate is
        // gone.
        let mut next = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut next))
            .await
            .expect("the next request was seen")
            .expect("read");
        assert_eq!(&next, b"NEXT");
    }

    #[tokio::test]
    async fn a_client_that_goes_mid_send_ends_the_send_with_its_error() {
        let body = vec![3u8; 32 << 20];
        let file = file_of(&body);
        let (mut server, mut client) = connected().await;
        let reader = std::thread::spawn(move || {
            let mut some = vec![0u8; 1 << 20];
            client.read_exact(&mut some).expect("read");
            drop(client);
        });
        let outcome = send_whole(&mut server, &file, body.len(), Duration::from_secs(10)).await;
        reader.join().expect("reader");
        assert!(matches!(outcome, Err(SendError::Client(_))), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_stretch_is_an_error_not_a_hang() {
        let file = file_of(b"0123456789");
        let (mut server, _client) = connected().await;
        let sender = FileSender::for_stream(&server).expect("a plain TCP connection");
        let outcome = sender
            .send(&mut server, b"H", &file, 2, 100, Duration::from_secs(5))
            .await;
        assert_eq!(outcome, Err(SendError::FileEndedEarly));
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_given_up_on_after_the_idle_time() {
        let body = vec![7u8; 32 << 20];
        let file = file_of(&body);
        let (mut server, _client) = connected().await;
        let outcome = send_whole(&mut server, &file, body.len(), Duration::from_millis(300)).await;
        assert_eq!(outcome, Err(SendError::Client("timed out".to_string())));
    }

    #[tokio::test]
    async fn only_a_tcp_connection_gets_a_file_sender() {
        let (one, _other) = tokio::net::UnixStream::pair().expect("socket pair");
        let mut unix = L4Stream::from(one);
        let digest = pingora::protocols::SocketDigest::from_raw_fd(unix.as_raw_fd());
        unix.set_socket_digest(digest);
        let unix: Stream = Box::new(unix);
        assert!(FileSender::for_stream(&unix).is_none());
        let (tcp, _client) = connected().await;
        assert!(FileSender::for_stream(&tcp).is_some());
    }
}
