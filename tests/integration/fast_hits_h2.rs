//! Plain hits over HTTP/2 answered in the loop that accepts the streams
//! (`proxy::fast_hits::h2`): the same answer as pingora's path, field for field, beside
//! streams that pingora's path serves on the same connection.

use std::time::Duration;

use crate::harness::origin::{pattern_range, Origin};
use crate::harness::{pop_with_cache, TestPop};

const FAST: &str = "edgecache_fast_hits_total{listener=\"https\"}";

/// Fields that differ from one answer to the next whichever path gives it.
const PER_ANSWER: [&str; 4] = ["date", "age", "x-request-id", "cache-status"];

/// An HTTP/2 client of the PoP's HTTPS listener that keeps its one connection.
fn h2_client(pop: &TestPop) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(pop.cert.pem.as_bytes()).expect("root");
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(root)
        .resolve("hachyderm.example", pop.setup.https())
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn url(pop: &TestPop, path: &str) -> String {
    format!(
        "https://hachyderm.example:{}{path}",
        pop.setup.https().port()
    )
}

/// An answer's status, its fields but those made per answer (with `Cache-Status` without
/// its `ttl`), and its body.
struct Got {
    status: u16,
    lasting: Vec<(String, String)>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn fetch(client: &reqwest::Client, url: &str, fields: &[(&str, &str)]) -> Got {
    let mut request = client.get(url);
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body").to_vec();
    let text = |v: &reqwest::header::HeaderValue| String::from_utf8_lossy(v.as_bytes()).to_string();
    let mut lasting: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !PER_ANSWER.contains(&name.as_str()))
        .map(|(name, value)| (name.to_string(), text(value)))
        .collect();
    let status_field = headers.get("cache-status").map(text).unwrap_or_default();
    let without_ttl: Vec<&str> = status_field
        .split(';')
        .map(str::trim)
        .filter(|p| !p.starts_with("ttl="))
        .collect();
    lasting.push(("cache-status".into(), without_ttl.join("; ")));
    lasting.sort();
    Got {
        status,
        lasting,
        headers,
        body,
    }
}

impl Got {
    fn field(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn fast_count(pop: &TestPop) -> f64 {
    pop.edge.metric(FAST).await.unwrap_or(0.0)
}

/// Asks for `path` until the accept loop answers it. pingora's path records the head after
/// its answer is sent, so the first hits may take that path.
async fn until_fast(pop: &TestPop, client: &reqwest::Client, path: &str) -> Got {
    let before = fast_count(pop).await;
    for _ in 0..40 {
        let got = fetch(client, &url(pop, path), &[]).await;
        if fast_count(pop).await > before {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} was never answered from the accept loop");
}

#[tokio::test]
async fn a_plain_http2_hit_is_answered_from_the_accept_loop_with_the_same_fields() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let client = h2_client(&pop);
    let path = "/bytes/3000?cc=public,max-age=600&h=X-Kept:one";
    let first = fetch(&client, &url(&pop, path), &[]).await;
    assert_eq!(first.field("x-cache-status"), "MISS");
    let slow = fetch(&client, &url(&pop, path), &[]).await;
    assert_eq!(slow.field("x-cache-status"), "HIT");
    let fast = until_fast(&pop, &client, path).await;
    assert_eq!(fast.status, 200);
    assert!(fast.body == pattern_range(0..3000), "the body differs");
    assert_eq!(fast.lasting, slow.lasting);
    assert_eq!(fast.field("content-length"), "3000");
    assert_ne!(fast.field("x-request-id"), slow.field("x-request-id"));
    assert_eq!(fast.field("x-request-id").len(), 32);
    assert!(fast.field("age").parse::<u64>().is_ok(), "Age");
    assert!(httpdate::parse_http_date(fast.field("date")).is_ok());
    // A field off the plain list takes pingora's path, with the same answer.
    let counted = fast_count(&pop).await;
    let other = fetch(&client, &url(&pop, path), &[("x-anything", "1")]).await;
    assert_eq!(other.field("x-cache-status"), "HIT");
    assert_eq!(other.lasting, fast.lasting);
    assert_eq!(fast_count(&pop).await, counted);
    assert_eq!(origin.hits_for("/bytes/3000"), 1);

    // Logged as any hit, with its protocol.
    let id = fast.field("x-request-id").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = pop.edge.stdout_text();
        if let Some(line) = text.lines().find(|l| l.contains(&id)) {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no line for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let record: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(record["protocol"], "HTTP/2");
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes"], 3000);
    assert_eq!(record["cache"], "HIT");
    assert_eq!(record["path"], path);
    assert_eq!(record["listener"], "https");
}

#[tokio::test]
async fn streams_answered_by_the_loop_and_by_pingora_share_a_connection() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let client = h2_client(&pop);
    let plain = "/bytes/12000?cc=public,max-age=600";
    fetch(&client, &url(&pop, plain), &[]).await;
    until_fast(&pop, &client, plain).await;
    // A body over what the loop queues is left to pingora's path, hit after hit.
    let large = "/bytes/70000?cc=public,max-age=600";
    for _ in 0..3 {
        fetch(&client, &url(&pop, large), &[]).await;
    }
    let counted = fast_count(&pop).await;
    assert!(counted >= 1.0);
    // Plain hits, hits with another field, large hits and misses, all at once.
    let mut requests = Vec::new();
    for n in 0..24 {
        let client = client.clone();
        let (target, fields): (String, &[(&str, &str)]) = match n % 4 {
            0 => (url(&pop, plain), &[]),
            1 => (url(&pop, plain), &[("x-anything", "1")]),
            2 => (url(&pop, large), &[]),
            _ => (
                url(&pop, &format!("/bytes/{}?cc=public,max-age=600", 1000 + n)),
                &[],
            ),
        };
        requests.push(tokio::spawn(async move {
            let got = fetch(&client, &target, fields).await;
            (n, got)
        }));
    }
    for request in requests {
        let (n, got) = request.await.expect("request");
        assert_eq!(got.status, 200, "request {n}");
        let length: usize = got.field("content-length").parse().expect("length");
        assert!(got.body == pattern_range(0..length as u64), "request {n}");
    }
    // The six plain requests were the loop's; the large ones never were.
    assert_eq!(fast_count(&pop).await, counted + 6.0);
    assert_eq!(origin.hits_for("/bytes/12000"), 1);
    assert_eq!(origin.hits_for("/bytes/70000"), 1);
}

#[tokio::test]
async fn fields_over_the_header_limit_get_431_as_on_pingoras_path() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let client = h2_client(&pop);
    let path = "/bytes/100?cc=public,max-age=600";
    fetch(&client, &url(&pop, path), &[]).await;
    until_fast(&pop, &client, path).await;
    let counted = fast_count(&pop).await;
    // A field the plain list allows, over `limits.max_header_size` (32 KiB).
    let agent = "a".repeat(40 * 1024);
    let got = fetch(&client, &url(&pop, path), &[("user-agent", &agent)]).await;
    assert_eq!(got.status, 431);
    assert_eq!(fast_count(&pop).await, counted);
}
