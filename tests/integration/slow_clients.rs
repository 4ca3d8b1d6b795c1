//! What one client can take: a request head (and a TLS handshake, and an HTTP/2 preface)
//! has `limits.client_header_timeout` to arrive, however the client spaces its bytes, so a
//! few tricklers cannot hold every connection slot of a listener; and a route's
//! `client_limit` bounds one client's requests per window and in flight.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::client::{raw_exchange, raw_status, tls_connect};
use crate::harness::edge::{Edge, EdgeSetup, TestCert};
use crate::harness::origin::Origin;

const LIMITS: &str = "limits:\n  max_connections: 4\n  client_header_timeout: 2s\n";

/// An edge with the limits above and h2c on its plain listener.
async fn edge(origin: &Origin) -> (Edge, EdgeSetup) {
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], &[origin.address], LIMITS);
    config.listener("http").h2c = true;
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    (edge, setup)
}

/// Sends a request head a header line at a time, one line every 300 ms for up to 15 s,
/// and returns what the edge answered before it closed.
async fn trickle(address: SocketAddr) -> String {
    trickle_after(address, b"GET /trickle HTTP/1.1\r\nHost: a.example\r\n").await
}

/// [`trickle`], starting with `start`.
async fn trickle_after(address: SocketAddr, start: &'static [u8]) -> String {
    let stream = TcpStream::connect(address).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(start).await;
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer)).await;
    sending.abort();
    String::from_utf8_lossy(&answer).to_string()
}

/// Waits until the edge closes `stream`, reading and dropping what it sends; how long it took.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    started: Instant,
) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after 20 s"),
        }
    }
}

#[tokio::test]
async fn four_trickling_clients_cannot_lock_out_a_fifth() {
    let origin = Origin::start().await;
    let (edge, setup) = edge(&origin).await;
    let address = setup.http();
    let tricklers: Vec<_> = (0..4).map(|_| tokio::spawn(trickle(address))).collect();
    edge.wait_metric("edgecache_open_connections{listener=\"http\"}", 4.0)
        .await;
    // Every slot is taken: the fifth client gets in once the tricklers are closed.
    let started = Instant::now();
    let served = loop {
        let answer = raw_exchange(
            address,
            b"GET /fifth HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        if raw_status(&answer) == Some(200) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the fifth client was locked out for 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for trickler in tricklers {
        let answer = trickler.await.expect("trickler");
        assert_eq!(raw_status(&answer), Some(408), "{answer}");
    }
    assert_eq!(origin.hits_for("/trickle"), 0);
    let refused = edge
        .metric("edgecache_rejected_requests_total{listener=\"http\",reason=\"header_timeout\"}")
        .await;
    assert_eq!(refused, Some(4.0));
    eprintln!(
        "the fifth client was served {} ms after it first tried",
        served.as_millis()
    );
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_start_is_closed_at_the_deadline() {
    let origin = Origin::start().await;
    let (_edge, setup) = edge(&origin).await;
    // h2c: half the HTTP/2 connection preface, then nothing.
    let started = Instant::now();
    let mut h2c = TcpStream::connect(setup.http()).await.expect("connect");
    h2c.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let waited = closed_after(&mut h2c, started).await;
    assert!(
        waited >= Duration::from_millis(1500),
        "closed early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(8), "h2c preface: {waited:?}");
    // TLS: a connection that never starts its handshake.
    let started = Instant::now();
    let mut silent = TcpStream::connect(setup.https()).await.expect("connect");
    let waited = closed_after(&mut silent, started).await;
    assert!(waited < Duration::from_secs(8), "TLS handshake: {waited:?}");
    // TLS with h2 agreed, and then no preface.
    let started = Instant::now();
    let mut tls = tls_connect(
        setup.https(),
        Some("hachyderm.example"),
        &[&tokio_rustls::rustls::version::TLS13],
        &[b"h2"],
    )
    .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let waited = closed_after(&mut tls, started).await;
    assert!(waited < Duration::from_secs(8), "h2 over TLS: {waited:?}");
    // An HTTP/1.1 head over TLS that stops half-way gets its 408.
    let mut half = tls_connect(
        setup.https(),
        Some("hachyderm.example"),
        &[&tokio_rustls::rustls::version::TLS13],
        &[b"http/1.1"],
    )
    .await;
    half.write_all(b"GET / HTTP/1.1\r\nHost: hachyderm.example\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(8), half.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), Some(408), "{answer}");
}

#[tokio::test]
async fn clients_that_send_in_time_are_unaffected() {
    let origin = Origin::start().await;
    let (_edge, setup) = edge(&origin).await;
    // A head in three pieces, each well within the deadline, then a kept-alive second
    // request after a pause longer than the header timeout (the keep-alive wait is its own).
    let mut stream = TcpStream::connect(setup.http()).await.expect("connect");
    for piece in [&b"GET /a HTTP/1.1\r\n"[..], b"Host: a.example\r\n", b"\r\n"] {
        stream.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("read");
    assert_eq!(raw_status(&String::from_utf8_lossy(&buf[..n])), Some(200));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stream
        .write_all(b"GET /b HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    assert_eq!(raw_status(&String::from_utf8_lossy(&answer)), Some(200));
    // HTTP/2 over h2c, a second request after a pause longer than the header timeout.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for path in ["/h2-first", "/h2-second"] {
        let resp = h2
            .get(format!("http://{}{path}", setup.http()))
            .send()
            .await
            .expect("h2c request");
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    assert_eq!(origin.hits_for("/h2-second"), 1);
}

/// Per-client limits: requests per window and requests in flight, by the client's real
/// address (after a trusted proxy), answered 429 with `Retry-After`.
#[tokio::test]
async fn a_client_past_its_route_limit_gets_429_and_others_do_not() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let extra = "proxy:\n  trusted_proxies: [\"127.0.0.1/32\"]\nsites:\n  - routes:\n      - path: /auth/sign_in\n        client_limit: { requests: 3, per: 5m, methods: [POST] }\n      - path: /slow/\n        client_limit: { concurrent: 2 }\n      - path: /api/\n        client_limit: { requests: 2, per: 1m, anonymous_only: true }\n";
    let config = setup.config(&[&cert], &[origin.address], extra);
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = |path: &str| format!("http://{}{path}", setup.http());
    let sign_in = |from: &'static str| {
        client
            .post(url("/auth/sign_in"))
            .header("x-forwarded-for", from)
            .body("user[email]=a@example.com")
            .send()
    };
    for _ in 0..3 {
        assert_eq!(sign_in("198.51.100.7").await.expect("post").status(), 200);
    }
    let limited = sign_in("198.51.100.7").await.expect("post");
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    // Rails routes a doubled slash as one: it is the same limited route.
    for doubled in ["//auth/sign_in", "/auth//sign_in"] {
        let resp = client
            .post(url(doubled))
            .header("x-forwarded-for", "198.51.100.7")
            .body("user[email]=a@example.com")
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 429, "{doubled}");
    }
    // Another client, and a GET of the same client, are not limited.
    assert_eq!(sign_in("198.51.100.8").await.expect("post").status(), 200);
    let page = client
        .get(url("/auth/sign_in"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    assert_eq!(origin.hits_for("/auth/sign_in"), 5);

    // Two requests in flight per client; the third waits for none of them.
    let slow = || {
        client
            .get(url("/slow/1500"))
            .header("x-forwarded-for", "203.0.113.5")
            .send()
    };
    let (a, b) = (tokio::spawn(slow()), tokio::spawn(slow()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = slow().await.expect("third");
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "1");
    for held in [a, b] {
        assert_eq!(held.await.expect("task").expect("slow").status(), 200);
    }
    assert_eq!(
        slow().await.expect("after").status(),
        200,
        "the slots came back"
    );

    // Only requests without credentials count on /api/.
    for _ in 0..2 {
        let resp = client
            .get(url("/api/v1/timelines/public"))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 200);
    }
    let anonymous = client
        .get(url("/api/v1/timelines/public"))
        .send()
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 429);
    let signed_in = client
        .get(url("/api/v1/timelines/home"))
        .bearer_auth("token")
        .send()
        .await
        .expect("get");
    assert_eq!(signed_in.status(), 200);

    for (route, limit, count) in [
        ("/auth/sign_in", "requests", 3.0),
        ("/slow/", "concurrent", 1.0),
        ("/api/", "requests", 1.0),
    ] {
        let sample = format!(
            "edgecache_client_limited_total{{limit=\"{limit}\",listener=\"http\",route=\"{route}\"}}"
        );
        assert_eq!(edge.metric(&sample).await, Some(count), "{sample}");
    }
}

/// On an h2c listener only the whole HTTP/2 preface means HTTP/2: an HTTP/1 request with a
/// `PRI` method gets the HTTP/1 loop, and its head the same deadline.
#[tokio::test]
async fn an_http1_pri_request_on_an_h2c_listener_keeps_the_head_deadline() {
    let origin = Origin::start().await;
    let (_edge, setup) = edge(&origin).await;
    let started = Instant::now();
    let answer = trickle_after(setup.http(), b"PRI /x HTTP/1.1\r\nHost: a.example\r\n").await;
    assert_eq!(raw_status(&answer), Some(408), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}
