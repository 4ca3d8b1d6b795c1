//! Malformed and hostile requests: the right 4xx, nothing forwarded, and the process lives.

use crate::harness::{
    raw_exchange, raw_exchange_then_close, raw_status, start_pop, Edge, EdgeSetup, Origin, TestPop,
};

async fn edge_with_origin() -> (Edge, EdgeSetup, Origin) {
    let origin = Origin::start().await;
    let extra = "limits:\n  max_uri_length: 2KiB\n  max_header_size: 16KiB\n";
    let TestPop { edge, setup, .. } = start_pop(&[origin.address], extra).await;
    (edge, setup, origin)
}

#[tokio::test]
async fn malformed_requests_get_the_right_status_and_never_reach_the_core() {
    let (mut edge, setup, origin) = edge_with_origin().await;
    let long_path = format!("/{}", "a".repeat(3000));
    let big_header = "b".repeat(20 * 1024);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage request line", b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400),
        ("bad method token", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        (
            "Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two different Content-Length values",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            400,
        ),
        (
            "chunked not last",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "over-long target",
            format!("GET {long_path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes(),
            414,
        ),
        (
            "over-large header block",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big_header}\r\n\r\n").into_bytes(),
            431,
        ),
        (
            // Refused as it arrives, once past the configured limits: the parser never
            // buffers it.
            "header block beyond the parser's hard limit",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Huge: {}\r\n\r\n", "c".repeat(1_100_000)).into_bytes(),
            431,
        ),
        (
            "obs-fold (a header continued on the next line)",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n".to_vec(),
            400,
        ),
        (
            "duplicate identical Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello".to_vec(),
            400,
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (name, request, expected) in &cases {
        let answer = raw_exchange(setup.http(), request).await;
        assert_eq!(
            raw_status(&answer),
            Some(*expected),
            "{name}: got {answer:?}"
        );
    }
    assert_eq!(origin.hits(), 0, "a malformed request reached the core");
    assert!(edge.is_running());
    assert_eq!(edge.admin_get("/healthz").await.0, 200);

    let refused = edge
        .metric("edgecache_rejected_requests_total{listener=\"http\",reason=\"headers_too_large\"}")
        .await;
    // The over-large block and the one beyond the parser's limit.
    assert_eq!(refused, Some(2.0));

    // A good request on a fresh connection still works.
    let answer = raw_exchange(
        setup.http(),
        b"GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), Some(200), "{answer}");
}

/// Deterministic pseudo-random bytes: the same "fuzz" corpus on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn random_bytes_on_every_port_never_take_the_process_down() {
    let (mut edge, setup, _origin) = edge_with_origin().await;
    for seed in 0..60u64 {
        let len = 1 + (seed as usize * 97) % 4000;
        let mut bytes = noise(seed, len);
        if seed % 3 == 0 {
            // Start like a request, then go wrong.
            let mut prefixed = b"GET /".to_vec();
            prefixed.append(&mut bytes);
            bytes = prefixed;
        }
        let target = if seed % 2 == 0 {
            setup.http()
        } else {
            setup.https()
        };
        let answer = raw_exchange_then_close(target, &bytes).await;
        if target == setup.http() {
            if let Some(status) = raw_status(&answer) {
                assert!((400..500).contains(&status), "seed {seed}: {answer}");
            }
        }
    }
    assert!(edge.is_running(), "{}", edge.stderr_text());
    assert_eq!(edge.admin_get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_a_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let TestPop {
        mut edge, setup, ..
    } = start_pop(&[origin.address], "limits:\n  client_body_timeout: 1s\n").await;

    let mut stream = tokio::net::TcpStream::connect(setup.http())
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /api/v2/media HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nonly a little",
        )
        .await
        .expect("write");
    // Then nothing more: the edge gives up on the body.
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the stalled upload was held open")
    .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), Some(408), "{answer}");
    assert!(edge.is_running());
}

#[tokio::test]
async fn an_http2_request_with_oversized_headers_gets_431() {
    let (_edge, setup, origin) = edge_with_origin().await;
    let cert_pem = std::fs::read_to_string(setup.path("site.pem")).expect("cert");
    let client = crate::harness::https_client(
        &[cert_pem.as_str()],
        &["hachyderm.example"],
        setup.https(),
        false,
    );
    let resp = client
        .get(format!(
            "https://hachyderm.example:{}/",
            setup.https().port()
        ))
        .header("X-Big", "b".repeat(20 * 1024))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 431);
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn a_chunked_body_with_an_invalid_chunk_size_gets_400() {
    let (_edge, setup, origin) = edge_with_origin().await;
    let answer = raw_exchange(
        setup.http(),
        b"POST /api/v1/statuses HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), Some(400), "{answer}");
    // pingora sends the head before it reads the body, so the core may have seen the
    // head; the connection to it is dropped where the body broke, and no complete request
    // reaches it.
    assert!(origin.hits() <= 1);
}
