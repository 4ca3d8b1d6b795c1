//! Answers whose body is a stretch of a file, sent with `sendfile(2)`: the kernel hands
//! the file's page-cache pages to the socket, and the body never passes through this
//! process (nginx serves its cache files the same way). Only for plain TCP connections:
//! TLS needs the bytes in the process to encrypt them.
//!
//! pingora owns the accepted socket and lends it only by descriptor number. Borrowing that
//! number for the length of a `&` borrow of the stream is the one `unsafe` block in the
//! crate; everything after it works on an owned duplicate of the descriptor, registered
//! with the runtime on its own so the send can wait for room in the socket buffer.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use tokio::io::{AsyncWriteExt, Interest};

/// The plain TCP (or Unix) connection under `stream`, if that is what it is.
pub fn plain_socket(stream: &Stream) -> Option<&L4Stream> {
    // `as_ref` first: the box itself is an `IO` too, and would downcast as the box.
    let plain = stream.as_ref().as_any().downcast_ref::<L4Stream>()?;
    (plain.as_raw_fd() >= 0).then_some(plain)
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

/// Writes `head` through the stream, then `len` bytes of `file` from `offset` with
/// `sendfile`, each wait for the client within `idle` (a client reading slowly but steadily
/// is not cut off). The caller has checked that `stream` is a plain connection.
pub async fn send_head_and_file(
    stream: &mut Stream,
    head: &[u8],
    file: &File,
    offset: u64,
    len: u64,
    idle: Duration,
) -> Result<(), String> {
    let within = |what: &'static str| move |_| format!("{what} timed out");
    tokio::time::timeout(idle, async {
        stream.write_all(head).await?;
        stream.flush().await
    })
    .await
    .map_err(within("writing the answer"))?
    .map_err(|e| format!("writing the answer: {e}"))?;
    if len == 0 {
        return Ok(());
    }
    let socket = plain_socket(stream)
        .and_then(borrowed_socket)
        .ok_or("the connection has no socket of its own")?
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating the socket: {e}"))?;
    // Registered with the runtime under the duplicate's own number; dropping it closes
    // only the duplicate.
    let socket = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket))
        .map_err(|e| format!("registering the socket: {e}"))?;
    send_file_range(&socket, file, offset, len, idle).await
}

/// Sends `len` bytes of `file` from `offset` to the socket.
async fn send_file_range(
    socket: &tokio::net::TcpStream,
    file: &File,
    offset: u64,
    len: u64,
    idle: Duration,
) -> Result<(), String> {
    let end = offset
        .checked_add(len)
        .and_then(|end| i64::try_from(end).ok())
        .ok_or("the body's stretch of the file is out of range")?;
    let mut position = i64::try_from(offset).map_err(|_| "the body's offset is out of range")?;
    while position < end {
        tokio::time::timeout(idle, socket.writable())
            .await
            .map_err(|_| "writing the answer timed out".to_string())?
            .map_err(|e| format!("writing the answer: {e}"))?;
        // One call sends what the socket buffer takes; the kernel caps it anyway.
        let count = usize::try_from(end - position).unwrap_or(usize::MAX);
        let sent = socket.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(socket, file, Some(&mut position), count)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => return Err("the body file ended early".to_string()),
            Ok(_) => {}
            // The socket buffer is full: wait for room.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.raw_os_error() == Some(Errno::EINTR as i32) => {}
            Err(e) => return Err(format!("writing the answer: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A connected pair: the accepted side as pingora would hold it, and the client.
    async fn connected() -> (Stream, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let client = std::net::TcpStream::connect(address).expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Box::new(L4Stream::from(server)), client)
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(bytes).expect("write");
        file
    }

    #[tokio::test]
    async fn the_head_and_the_files_stretch_arrive_in_order_and_whole() {
        // Larger than any socket buffer, so the send waits for the reader many times.
        let body: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
        let file = file_of(&body);
        let (mut server, mut client) = connected().await;
        assert!(plain_socket(&server).is_some());
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).expect("read");
            got
        });
        let (offset, len) = (5u64, body.len() as u64 - 9);
        send_head_and_file(
            &mut server,
            b"HEAD\r\n",
            &file,
            offset,
            len,
            Duration::from_secs(10),
        )
        .await
        .expect("sent");
        drop(server);
        let got = reader.join().expect("reader");
        assert_eq!(&got[..6], b"HEAD\r\n");
        assert!(got[6..] == body[5..body.len() - 4], "the body differs");
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_stretch_is_an_error_not_a_hang() {
        let file = file_of(b"0123456789");
        let (mut server, _client) = connected().await;
        let outcome =
            send_head_and_file(&mut server, b"H", &file, 2, 100, Duration::from_secs(5)).await;
        assert_eq!(outcome, Err("the body file ended early".to_string()));
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_given_up_on_after_the_idle_time() {
        let body = vec![7u8; 32 << 20];
        let file = file_of(&body);
        let (mut server, _client) = connected().await;
        let outcome = send_head_and_file(
            &mut server,
            b"H",
            &file,
            0,
            body.len() as u64,
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(outcome, Err("writing the answer timed out".to_string()));
    }
}
