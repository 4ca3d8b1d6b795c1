//! Forwarding to the core: what the core sees, what the client gets back, and what happens
//! when the core is down, slow, or one of several hosts is gone.

use std::time::Duration;

use crate::harness::{
    free_address, seen_headers, start_pop, Edge, EdgeSetup, Origin, TestCert, TestPop,
};

async fn plain_edge(origin_hosts: &[std::net::SocketAddr], extra: &str) -> (Edge, EdgeSetup) {
    let TestPop { edge, setup, .. } = start_pop(origin_hosts, extra).await;
    (edge, setup)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

#[tokio::test]
async fn the_core_sees_the_real_client_and_no_client_forgeries() {
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(&[origin.address], "").await;
    let resp = client()
        .get(format!("http://{}/@alice?page=2", setup.http()))
        .header("Host", "hachyderm.example")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Real-IP", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=6.6.6.6;host=evil.example")
        .header("X-Forwarded-Ssl", "on")
        .header("X-Forwarded-Scheme", "https")
        .header("Client-IP", "6.6.6.6")
        .header("Connection", "X-Hop-Secret")
        .header("X-Hop-Secret", "only for the first hop")
        .header("Keep-Alive", "timeout=99")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    // The core's own hop-by-hop headers stay on its side too.
    assert!(
        resp.headers().get("x-origin-private").is_none(),
        "{:?}",
        resp.headers()
    );
    assert!(
        resp.headers().get("keep-alive").is_none(),
        "{:?}",
        resp.headers()
    );
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["uri"], "/@alice?page=2");
    assert_eq!(seen_headers(&body, "host"), vec!["hachyderm.example"]);
    assert_eq!(seen_headers(&body, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen_headers(&body, "x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(seen_headers(&body, "x-forwarded-proto"), vec!["http"]);
    for dropped in [
        "x-forwarded-host",
        "forwarded",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "client-ip",
        "x-hop-secret",
        "keep-alive",
    ] {
        assert!(
            seen_headers(&body, dropped).is_empty(),
            "{dropped} reached the core: {body}"
        );
    }
}

#[tokio::test]
async fn a_trusted_proxy_passes_the_client_address_through() {
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(
        &[origin.address],
        "proxy:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
    )
    .await;
    let resp = client()
        .get(format!("http://{}/", setup.http()))
        .header("X-Forwarded-For", "198.51.100.7")
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .expect("request");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(
        seen_headers(&body, "x-forwarded-for"),
        vec!["198.51.100.7, 127.0.0.1"]
    );
    assert_eq!(seen_headers(&body, "x-real-ip"), vec!["198.51.100.7"]);
    assert_eq!(seen_headers(&body, "x-forwarded-proto"), vec!["https"]);
}

#[tokio::test]
async fn an_unreachable_core_gets_a_short_502_or_503() {
    let dead = free_address();
    let (edge, setup) = plain_edge(&[dead], "").await;
    for _ in 0..3 {
        let resp = client()
            .get(format!("http://{}/api/v1/timelines/public", setup.http()))
            .send()
            .await
            .expect("an answer, not a hang");
        // 502 while the host is believed up (the connect fails), 503 once the health check
        // has taken it out; either way with Retry-After.
        let status = resp.status().as_u16();
        assert!(matches!(status, 502 | 503), "{status}");
        assert_eq!(
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("5")
        );
        let body = resp.text().await.expect("body");
        assert!(
            body.contains("core is unreachable") || body.contains("no core host is healthy"),
            "{body}"
        );
        assert!(body.len() < 200, "{body}");
    }
    let errors = edge.admin_get("/metrics").await.1;
    assert!(
        errors.contains("edgecache_upstream_errors_total{group=\"web\""),
        "{errors}"
    );
}

#[tokio::test]
async fn a_core_that_does_not_answer_in_time_gets_a_504() {
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(&[origin.address], "").await;
    // read_timeout is 3s in the test config.
    let resp = client()
        .get(format!("http://{}/slow/6000", setup.http()))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status(), 504);
    assert!(resp
        .text()
        .await
        .expect("body")
        .contains("did not answer in time"));
}

/// An edge in front of a host that passed its health check but refuses connections now,
/// and a host that is up; checks run every 60 s, so only the failed request tells.
async fn edge_with_a_vanishing_host(origin: &Origin) -> (Edge, EdgeSetup, std::net::SocketAddr) {
    let vanishing = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let vanishing_address = vanishing.local_addr().expect("address");
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], &[vanishing_address, origin.address], "");
    config.group("web").health().interval = "60s".to_string();
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    edge.wait_ready_status(200).await;
    let gauge = format!("edgecache_core_host_up{{group=\"web\",host=\"{vanishing_address}\"}}");
    assert_eq!(edge.metric(&gauge).await, Some(1.0));
    drop(vanishing);
    (edge, setup, vanishing_address)
}

/// A GET that meets the refusing host goes on to the one that is up, and the refusing host
/// is taken out of rotation at once: one connect failure in all.
#[tokio::test]
async fn gets_fail_over_and_a_host_that_refused_is_ejected() {
    let origin = Origin::start().await;
    let (edge, setup, vanishing) = edge_with_a_vanishing_host(&origin).await;
    for i in 0..10 {
        let resp = client()
            .get(format!("http://{}/api/v1/timelines/{i}", setup.http()))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(origin.hits_for(&format!("/api/v1/timelines/{i}")), 1);
    }
    let metric = |name: String| {
        let edge = &edge;
        async move { edge.metric(&name).await.unwrap_or(0.0) }
    };
    assert_eq!(
        metric(format!(
            "edgecache_upstream_errors_total{{group=\"web\",host=\"{vanishing}\",kind=\"connect\"}}"
        ))
        .await,
        1.0
    );
    assert_eq!(
        metric("edgecache_upstream_retries_total{group=\"web\"}".into()).await,
        1.0
    );
    assert_eq!(
        metric(format!(
            "edgecache_core_host_ejected{{group=\"web\",host=\"{vanishing}\"}}"
        ))
        .await,
        1.0
    );
}

/// A POST is never retried, even though a refused connect sent nothing: the one POST that
/// met the refusing host gets a 502, and the host is ejected for the rest.
#[tokio::test]
async fn a_post_is_never_retried_even_after_a_refused_connect() {
    let origin = Origin::start().await;
    let (edge, setup, _) = edge_with_a_vanishing_host(&origin).await;
    let mut failed = 0;
    for i in 0..10 {
        let resp = client()
            .post(format!("http://{}/api/v1/statuses/{i}", setup.http()))
            .body(format!("status number {i}"))
            .send()
            .await
            .expect("request");
        match resp.status().as_u16() {
            200 => assert_eq!(origin.hits_for(&format!("/api/v1/statuses/{i}")), 1),
            502 => {
                failed += 1;
                assert_eq!(origin.hits_for(&format!("/api/v1/statuses/{i}")), 0);
            }
            other => panic!("POST {i}: {other}"),
        }
    }
    assert_eq!(
        failed, 1,
        "only the first POST to the refusing host fails; it is then ejected"
    );
    assert_eq!(
        edge.metric("edgecache_upstream_retries_total{group=\"web\"}")
            .await
            .unwrap_or(0.0),
        0.0,
        "no POST was retried"
    );
}

#[tokio::test]
async fn request_bodies_reach_the_core() {
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(&[origin.address], "").await;
    let payload = vec![b'x'; 3 * 1024 * 1024];
    let resp = client()
        .post(format!("http://{}/api/v2/media", setup.http()))
        .body(payload)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["body_length"], 3 * 1024 * 1024);
}

/// `Upgrade: h2c` is a known way to open a tunnel past a proxy's checks; only websocket
/// handshakes may upgrade.
#[tokio::test]
async fn an_h2c_upgrade_is_not_passed_to_the_core() {
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(&[origin.address], "").await;
    let answer = crate::harness::raw_exchange(
        setup.http(),
        b"GET /api/v1/instance HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert_eq!(crate::harness::raw_status(&answer), Some(200), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
    let body: serde_json::Value = serde_json::from_str(body.trim()).expect("json");
    for dropped in ["upgrade", "http2-settings", "connection"] {
        assert!(
            seen_headers(&body, dropped).is_empty(),
            "{dropped} reached the core: {body}"
        );
    }
}

#[tokio::test]
async fn an_http10_request_without_keep_alive_gets_its_connection_closed() {
    use tokio::io::AsyncReadExt;
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(&[origin.address], "").await;
    let mut stream = crate::harness::client::connect_and_send(
        setup.http(),
        b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n",
    )
    .await;
    // A kept-alive connection would stay open for the 60 s keep-alive timeout; the edge must
    // close this one right after the answer, which read_to_end sees as the end of the stream.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the connection was held open after an HTTP/1.0 answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(crate::harness::raw_status(&answer), Some(200), "{answer}");
    assert!(
        !answer
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{answer}"
    );
}

/// The streaming API's websocket handshake passes through, and bytes then flow both ways.
#[tokio::test]
async fn a_websocket_upgrade_passes_through_and_carries_bytes_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(&[origin.address], "").await;
    let mut stream = crate::harness::client::connect_and_send(
        setup.http(),
        b"GET /echo-upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("handshake answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");

    for message in [&b"first frame"[..], &b"second, longer frame of bytes"[..]] {
        stream.write_all(message).await.expect("write");
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(echoed, message);
    }
}
