//! Unit tests of the connection loop: its task's size, its slot, request heads.

use super::*;

/// An app behind the loop that answers nothing; the tests below never reach it.
struct NoApp;

#[async_trait]
impl HttpServerApp for NoApp {
    async fn process_new_http(
        self: &Arc<Self>,
        _session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<pingora::apps::ReusedHttpStream> {
        None
    }
}

fn counted_app() -> Arc<CountedApp<NoApp>> {
    let text = "listeners:\n  - { name: http, address: \"127.0.0.1:0\" }\n\
                core:\n  groups:\n    web: { hosts: [\"127.0.0.1:3000\"] }\n";
    let config = crate::config::parse(text, std::path::Path::new("edgecache.yaml"))
        .unwrap_or_else(|e| panic!("the config loads: {e}"));
    let settings = Arc::new(ArcSwap::from_pointee(ProxySettings::from_config(&config)));
    Arc::new(CountedApp::new(
        "http",
        NoApp,
        settings,
        HeadDeadlines::new("http"),
    ))
}

/// A client socket and the server's end of it as pingora's listener hands it over.
pub(super) async fn accepted_stream() -> (tokio::net::TcpStream, Stream) {
    let (client, server) = crate::head_deadline::tests::connected_pair().await;
    (client, Box::new(L4Stream::from(server)))
}

/// Every idle keep-alive connection holds its task's whole future: what a request needs
/// must be allocated for the request, not reserved in that future for the connection's
/// life.
#[tokio::test]
async fn a_connection_task_stays_small_between_requests() {
    let app = counted_app();
    let (_client, stream) = accepted_stream().await;
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let slot = OpenGuard {
        app: Arc::clone(&app),
    };
    app.open.fetch_add(1, Ordering::AcqRel);
    let task = CountedApp::serve_http1(slot, stream, shutdown);
    // Pingora's own per-connection task is 8,832 bytes (TLS handshake state inline);
    // this one is 520 in an unoptimised build. The bound leaves room for compiler and
    // dependency changes, not for state held between requests.
    let size = std::mem::size_of_val(&task);
    assert!(size <= 1024, "a connection's task future is {size} bytes");
}

/// The slot is given back when the connection's task ends, and when it is dropped unrun.
#[tokio::test]
async fn a_connection_gives_its_slot_back_when_it_closes_or_never_runs() {
    let app = counted_app();
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let (client, stream) = accepted_stream().await;
    assert!(app.process_new(stream, &shutdown).await.is_none());
    assert_eq!(app.open.load(Ordering::Acquire), 1);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.open.load(Ordering::Acquire) != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.open.load(Ordering::Acquire), 0);

    let (_client, stream) = accepted_stream().await;
    app.open.fetch_add(1, Ordering::AcqRel);
    let slot = OpenGuard {
        app: Arc::clone(&app),
    };
    drop(CountedApp::serve_http1(slot, stream, shutdown));
    assert_eq!(app.open.load(Ordering::Acquire), 0);
}

#[test]
fn a_head_ends_at_its_blank_line() {
    let end = |bytes: &[u8]| head_end(bytes, &mut 0);
    assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(27));
    assert_eq!(end(b"GET / HTTP/1.1\nHost: a\n\nbody"), Some(24));
    assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    // Empty lines before the request line are not its end.
    assert_eq!(end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
    assert_eq!(end(b"\r\n\r\n"), None);
}

#[test]
fn a_head_that_announces_a_body_or_an_upgrade_keeps_what_follows_for_pingora() {
    assert!(!announces_body(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    for field in [
        "Content-Length: 0",
        "content-length : 5",
        "Transfer-Encoding: chunked",
        "TRANSFER-ENCODING:\tchunked",
        "Upgrade: websocket",
    ] {
        let head = format!("GET / HTTP/1.1\r\nHost: a\r\n{field}\r\n\r\n");
        assert!(announces_body(head.as_bytes()), "{field}");
    }
    // A bare line feed ends a line too.
    assert!(announces_body(b"GET / HTTP/1.1\nContent-Length: 1\n\n"));
    // The request line is no field.
    assert!(!announces_body(
        b"GET /content-length: HTTP/1.1\r\nHost: a\r\n\r\n"
    ));
}

#[test]
fn a_head_arriving_byte_by_byte_is_found_across_reads() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut searched = 0;
    for len in 1..head.len() {
        assert_eq!(head_end(&head[..len], &mut searched), None, "{len}");
    }
    assert_eq!(head_end(head, &mut searched), Some(head.len()));
}

#[tokio::test]
async fn a_trickled_head_times_out_and_a_long_one_is_refused() {
    let (mut client, mut server) = tokio::io::duplex(64);
    let deadline = Instant::now() + Duration::from_millis(100);
    let writer = tokio::spawn(async move {
        for byte in b"GET / HTTP/1.1\r\nHost: a" {
            if client.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client
    });
    let got = read_head(&mut server, BytesMut::new(), deadline, 1024).await;
    assert_eq!(got, HeadRead::TimedOut);
    drop(writer);

    let (mut client, mut server) = tokio::io::duplex(4096);
    client
        .write_all(b"GET / HTTP/1.1\r\nX: 0123456789012345678901234567890123456789\r\n")
        .await
        .expect("write");
    let far = Instant::now() + Duration::from_secs(5);
    let got = read_head(&mut server, BytesMut::new(), far, 40).await;
    assert_eq!(got, HeadRead::TooLong { line_ended: true });
    let (mut client, mut server) = tokio::io::duplex(4096);
    client.write_all(&[b'a'; 100]).await.expect("write");
    let got = read_head(&mut server, BytesMut::new(), far, 40).await;
    assert_eq!(got, HeadRead::TooLong { line_ended: false });
}

/// A reader that counts the reads that returned bytes.
struct CountedReads<R> {
    inner: R,
    with_bytes: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountedReads<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.with_bytes += 1;
        }
        polled
    }
}

/// A request head that has arrived whole is taken in one read, on a kept-alive connection
/// and on a new one: learning that a request has begun must not cost every request a read
/// (a system call on plain TCP) of its own.
#[tokio::test]
async fn a_head_that_arrived_whole_is_taken_in_one_read() {
    let head = b"GET /media/a.png HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n";
    let far = Instant::now() + Duration::from_secs(5);
    for kept_alive in [true, false] {
        let (mut client, server) = tokio::io::duplex(4096);
        let mut server = CountedReads {
            inner: server,
            with_bytes: 0,
        };
        let (_tx, mut shutdown) = tokio::sync::watch::channel(false);
        client.write_all(head).await.expect("write");
        let first = if kept_alive {
            wait_for_request(&mut server, Duration::from_secs(5), &mut shutdown).await
        } else {
            wait_for_first_request(&mut server, far, &mut shutdown).await
        };
        let first = first.expect("the request's first bytes");
        let got = read_head(&mut server, first, far, 1024).await;
        assert_eq!(got, HeadRead::Complete(BytesMut::from(&head[..])));
        assert_eq!(server.with_bytes, 1, "reads that returned bytes");
    }
}

/// The end of a connection, or of the wait, is no request.
#[tokio::test]
async fn a_close_or_the_end_of_the_wait_is_no_request() {
    let (client, mut server) = tokio::io::duplex(64);
    let (_tx, mut shutdown) = tokio::sync::watch::channel(false);
    drop(client);
    let closed = wait_for_request(&mut server, Duration::from_secs(5), &mut shutdown).await;
    assert_eq!(closed, None);
    let (_client, mut server) = tokio::io::duplex(64);
    let idle = wait_for_request(&mut server, Duration::from_millis(20), &mut shutdown).await;
    assert_eq!(idle, None);
    let past = Instant::now() + Duration::from_millis(20);
    let late = wait_for_first_request(&mut server, past, &mut shutdown).await;
    assert_eq!(late, None);
}
