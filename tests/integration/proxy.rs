//! Forwarding to the core: what the core sees, what the client gets back, and what happens
//! when the core is down, slow, or one of several hosts is gone.

use std::time::Duration;

use crate::harness::{free_address, seen_headers, Edge, EdgeSetup, Origin, TestCert};

async fn plain_edge(origin_hosts: &[std::net::SocketAddr], extra: &str) -> (Edge, EdgeSetup) {
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let config = setup.config(&[&cert], origin_hosts, extra);
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
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
        .get(format!("http://{}/@alice?page=2", setup.http))
        .header("Host", "hachyderm.example")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Real-IP", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=6.6.6.6;host=evil.example")
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
        .get(format!("http://{}/", setup.http))
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
async fn an_unreachable_core_gets_a_short_502() {
    let dead = free_address();
    let (edge, setup) = plain_edge(&[dead], "").await;
    for _ in 0..3 {
        let resp = client()
            .get(format!("http://{}/api/v1/timelines/public", setup.http))
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(resp.status(), 502);
        let body = resp.text().await.expect("body");
        assert!(body.contains("core is unreachable"), "{body}");
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
        .get(format!("http://{}/slow/6000", setup.http))
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

#[tokio::test]
async fn requests_fail_over_to_the_host_that_is_up() {
    let origin = Origin::start().await;
    let dead = free_address();
    let (_edge, setup) = plain_edge(&[dead, origin.address], "").await;
    for i in 0..10 {
        let resp = client()
            .post(format!("http://{}/api/v1/statuses", setup.http))
            .body(format!("status number {i}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "request {i}");
    }
    assert_eq!(origin.hits(), 10);
}

#[tokio::test]
async fn request_bodies_reach_the_core() {
    let origin = Origin::start().await;
    let (_edge, setup) = plain_edge(&[origin.address], "").await;
    let payload = vec![b'x'; 3 * 1024 * 1024];
    let resp = client()
        .post(format!("http://{}/api/v2/media", setup.http))
        .body(payload)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["body_length"], 3 * 1024 * 1024);
}
