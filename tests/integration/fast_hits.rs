//! Plain hits answered from the HTTP/1 connection loop (`proxy::fast_hits`): the same
//! answer as pingora's path, field for field, and never where that path would answer
//! differently (a purge, an expiry, a range, a validator). Pipelined requests are each
//! answered, in order, whichever path takes them.

use std::time::Duration;

use crate::harness::client::{raw_exchange, Answer};
use crate::harness::origin::{pattern_range, Origin};
use crate::harness::{get, pop_with_cache};

const FAST: &str = "edgecache_fast_hits_total{listener=\"http\"}";

/// Fields that differ from one answer to the next whichever path gives it.
const PER_ANSWER: [&str; 4] = ["date", "age", "x-request-id", "cache-status"];

/// The answer's fields but those made per answer, sorted, and `Cache-Status` without its
/// `ttl` (which counts down).
fn lasting_fields(answer: &Answer) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = answer
        .headers
        .iter()
        .filter(|(name, _)| !PER_ANSWER.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let status = answer.header("cache-status");
    let without_ttl: Vec<&str> = status
        .split(';')
        .map(str::trim)
        .filter(|p| !p.starts_with("ttl="))
        .collect();
    fields.push(("cache-status".into(), without_ttl.join("; ")));
    fields.sort();
    fields
}

async fn fast_count(pop: &crate::harness::TestPop) -> f64 {
    pop.edge.metric(FAST).await.unwrap_or(0.0)
}

/// Asks for `path` until the loop answers it, and returns that answer with how many
/// requests it took. pingora's path records the head after its answer is sent, and records
/// nothing while the object is still arriving, so the first hits may take that path.
async fn until_fast_with(
    pop: &crate::harness::TestPop,
    path: &str,
    headers: &[(&str, &str)],
) -> (Answer, u32) {
    let before = fast_count(pop).await;
    for sent in 1..=40 {
        let answer = get(pop.setup.http(), path, headers).await;
        if fast_count(pop).await > before {
            return (answer, sent);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{path} was never answered from the loop");
}

async fn until_fast(pop: &crate::harness::TestPop, path: &str) -> Answer {
    until_fast_with(pop, path, &[]).await.0
}

#[tokio::test]
async fn a_plain_hit_is_answered_from_the_loop_with_the_same_fields() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/fast/same?cc=public,max-age=600&h=X-Kept:one";
    assert_eq!(
        get(pop.setup.http(), path, &[]).await.cache_status(),
        "MISS"
    );
    // pingora's path answers the first hit and leaves its head.
    let slow = get(pop.setup.http(), path, &[]).await;
    assert_eq!(slow.cache_status(), "HIT");
    assert_eq!(fast_count(&pop).await, 0.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fast = until_fast(&pop, path).await;
    assert_eq!(fast.cache_status(), "HIT");
    assert_eq!(fast.status, 200);
    assert_eq!(fast.body, slow.body);
    assert_eq!(lasting_fields(&fast), lasting_fields(&slow));
    // The per-answer fields are this answer's own.
    assert_ne!(fast.header("x-request-id"), slow.header("x-request-id"));
    assert_eq!(fast.header("x-request-id").len(), 32);
    let age: u64 = fast.header("age").parse().expect("Age");
    assert!((1..=3).contains(&age), "{age}");
    let ttl: u64 = fast
        .header("cache-status")
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.parse().ok())
        .expect("ttl");
    assert!((596..=599).contains(&ttl), "{ttl}");
    assert!(httpdate::parse_http_date(fast.header("date")).is_ok());
    // A field off the plain list takes pingora's path, with the same answer.
    let other = get(pop.setup.http(), path, &[("X-Anything", "1")]).await;
    assert_eq!(other.cache_status(), "HIT");
    assert_eq!(lasting_fields(&other), lasting_fields(&fast));
    assert_eq!(origin.hits_for("/fast/same"), 1);
}

#[tokio::test]
async fn a_fast_hit_leaves_the_same_access_log_line_and_counts() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/fast/logged?cc=public,max-age=600";
    get(pop.setup.http(), path, &[]).await;
    let requests = "edgecache_requests_total{listener=\"http\",status_class=\"2xx\"}";
    let hits = "edgecache_cache_responses_total{status=\"HIT\"}";
    // The miss is counted once its answer is sent: wait for it.
    pop.edge.wait_metric(requests, 1.0).await;
    let before = (1.0, pop.edge.metric(hits).await.unwrap_or(0.0));
    let headers = [
        ("User-Agent", "fast-agent"),
        ("Referer", "https://r.example/"),
    ];
    let (fast, sent) = until_fast_with(&pop, path, &headers).await;
    // Every request sent is counted once, as a hit, whichever path answered it.
    let sent = f64::from(sent);
    pop.edge.wait_metric(requests, before.0 + sent).await;
    pop.edge.wait_metric(hits, before.1 + sent).await;
    let id = fast.header("x-request-id").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = pop.edge.stdout_text();
        if let Some(line) = text.lines().find(|l| l.contains(&id)) {
            break line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line for {id}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let record: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], path);
    assert_eq!(record["host"], pop.setup.http().to_string());
    assert_eq!(record["protocol"], "HTTP/1.1");
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes"], fast.body.len());
    assert_eq!(record["cache"], "HIT");
    assert_eq!(record["upstream"], "");
    assert_eq!(record["user_agent"], "fast-agent");
    assert_eq!(record["referer"], "https://r.example/");
    assert_eq!(record["client_ip"], "127.0.0.1");
    assert_eq!(record["listener"], "http");
}

#[tokio::test]
async fn purges_expiry_ranges_and_validators_take_pingoras_path() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let host = pop.setup.http().to_string();
    let path = "/fast/guarded?cc=public,max-age=600&etag=v1";
    get(pop.setup.http(), path, &[]).await;
    let stored = until_fast(&pop, path).await;
    let fast_before = fast_count(&pop).await;

    // A range and a validator get pingora's answers.
    let part = get(pop.setup.http(), path, &[("Range", "bytes=0-3")]).await;
    assert_eq!((part.status, part.body.len()), (206, 4));
    let etag = stored.header("etag").to_string();
    assert!(!etag.is_empty());
    let unchanged = get(pop.setup.http(), path, &[("If-None-Match", &etag)]).await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(fast_count(&pop).await, fast_before);

    // After a purge the next request goes to the core.
    let (status, _) = pop
        .purge(&format!(
            "url=http%3A%2F%2F{host}%2Ffast%2Fguarded%3Fcc%3Dpublic%2Cmax-age%3D600%26etag%3Dv1"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        get(pop.setup.http(), path, &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(fast_count(&pop).await, fast_before);
    assert_eq!(origin.hits_for("/fast/guarded"), 2);

    // An object past its freshness is not answered from the loop.
    let short = "/fast/short?cc=public,max-age=2";
    get(pop.setup.http(), short, &[]).await;
    until_fast(&pop, short).await;
    let fast_before = fast_count(&pop).await;
    let fetched = origin.hits_for("/fast/short");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let late = get(pop.setup.http(), short, &[]).await;
    assert_ne!(late.cache_status(), "HIT");
    assert_eq!(fast_count(&pop).await, fast_before);
    assert_eq!(origin.hits_for("/fast/short"), fetched + 1);
}

/// Pipelined requests are answered in order, whichever path takes each, and a connection
/// answered from a disk copy's file (with `sendfile`) carries the next request as well.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let host = pop.setup.http().to_string();
    for path in [
        "/fast/pipelined?cc=public,max-age=600",
        "/bytes/1200000?cc=public,max-age=600",
    ] {
        get(pop.setup.http(), path, &[]).await;
        until_fast(&pop, path).await;
        let fast_before = fast_count(&pop).await;
        let one = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let last = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(pop.setup.http(), format!("{one}{one}{last}").as_bytes()).await;
        let lower = answer.to_ascii_lowercase();
        assert_eq!(lower.matches("http/1.1 200 ok").count(), 3, "{path}");
        assert_eq!(lower.matches("x-cache-status: hit").count(), 3, "{path}");
        // Each head is answered on its own: the two plain ones from the loop, the last
        // (`Connection: close`) by pingora.
        assert_eq!(fast_count(&pop).await, fast_before + 2.0, "{path}");
    }
}

/// An object stored without `Content-Length` is answered chunked by pingora's path; the
/// loop, which writes the body as it is, leaves it to that path.
#[tokio::test]
async fn an_object_stored_without_a_length_keeps_its_chunked_answers() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let host = pop.setup.http().to_string();
    let path = "/bytes/3000?chunked=1&cc=public,max-age=600";
    let first = get(pop.setup.http(), path, &[]).await;
    assert_eq!((first.status, first.body.len()), (200, 3000));
    assert_eq!(first.header("content-length"), "");
    // Several hits on one connection, each read off the wire as sent.
    let one = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let last = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    for _ in 0..3 {
        let answer = raw_exchange(pop.setup.http(), format!("{one}{one}{last}").as_bytes()).await;
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
        assert_eq!(
            answer.matches("Transfer-Encoding: chunked").count()
                + answer.matches("transfer-encoding: chunked").count(),
            3,
            "{answer}"
        );
        // Three chunked bodies, each ended by its last chunk.
        assert_eq!(answer.matches("\r\n0\r\n\r\n").count(), 3, "{answer}");
    }
    assert_eq!(origin.hits_for("/bytes/3000"), 1);
}

/// A body many times the socket's write buffer goes out whole.
#[tokio::test]
async fn a_large_body_goes_out_whole() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/250000?cc=public,max-age=600";
    let first = get(pop.setup.http(), path, &[]).await;
    assert_eq!(first.body.len(), 250_000);
    let fast = until_fast(&pop, path).await;
    assert_eq!(fast.header("content-length"), "250000");
    assert!(fast.body == first.body, "the loop's body differs");
}

/// An object kept on disk only (over the memory tier's object size) goes out from its file,
/// byte for byte, with the fields pingora's path gives it, once pingora's path has read
/// it whole and checked every block.
#[tokio::test]
async fn a_disk_copy_goes_out_from_its_file_with_the_same_fields() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/3000000?cc=public,max-age=600&h=X-Kept:disk";
    let first = get(pop.setup.http(), path, &[]).await;
    assert_eq!(first.cache_status(), "MISS");
    assert!(first.body == pattern_range(0..3_000_000));
    let slow = get(pop.setup.http(), path, &[]).await;
    assert_eq!(slow.cache_status(), "HIT");
    let fast = until_fast(&pop, path).await;
    assert_eq!(fast.status, 200);
    assert!(fast.body == pattern_range(0..3_000_000), "the body differs");
    assert_eq!(lasting_fields(&fast), lasting_fields(&slow));
    // One more answer from the loop is a disk read of the whole body, as on pingora's
    // path, and never a memory one: the object is on disk only.
    let read = |tier: &str| format!("edgecache_cache_tier_read_bytes_total{{tier=\"{tier}\"}}");
    let (disk, memory) = (read("disk"), read("memory"));
    let before = (
        fast_count(&pop).await,
        pop.edge.metric(&disk).await.unwrap_or(0.0),
        pop.edge.metric(&memory).await.unwrap_or(0.0),
    );
    let again = get(pop.setup.http(), path, &[]).await;
    assert!(
        again.body == pattern_range(0..3_000_000),
        "the body differs"
    );
    let after = (
        fast_count(&pop).await,
        pop.edge.metric(&disk).await.unwrap_or(0.0),
        pop.edge.metric(&memory).await.unwrap_or(0.0),
    );
    assert_eq!(after.0, before.0 + 1.0, "not answered from the loop");
    assert_eq!(after.1, before.1 + 3_000_000.0);
    assert_eq!(after.2, before.2);
    assert_eq!(origin.hits_for("/bytes/3000000"), 1);
}

/// Over TLS the body has to pass through the process to be encrypted: a disk copy keeps
/// pingora's path there, block by block and checked.
#[tokio::test]
async fn a_disk_copy_over_tls_keeps_pingoras_path() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/2000000?cc=public,max-age=600";
    let client = crate::harness::https_client(
        &[pop.cert.pem.as_str()],
        &["hachyderm.example"],
        pop.setup.https(),
        true,
    );
    let url = format!(
        "https://hachyderm.example:{}{path}",
        pop.setup.https().port()
    );
    for expected in ["MISS", "HIT", "HIT", "HIT", "HIT"] {
        let resp = client.get(&url).send().await.expect("request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_11);
        assert_eq!(resp.headers()["x-cache-status"], expected);
        let body = resp.bytes().await.expect("body");
        assert!(
            body == pattern_range(0..2_000_000),
            "{expected}: body differs"
        );
    }
    let tls_fast = "edgecache_fast_hits_total{listener=\"https\"}";
    assert_eq!(pop.edge.metric(tls_fast).await.unwrap_or(0.0), 0.0);
    // The same client's hits of an object in memory are answered from the loop: the zero
    // above is the disk copy's, not the client's.
    let small = format!(
        "https://hachyderm.example:{}/bytes/2000?cc=public,max-age=600",
        pop.setup.https().port()
    );
    for _ in 0..20 {
        let resp = client.get(&small).send().await.expect("request");
        assert!(resp.bytes().await.expect("body") == pattern_range(0..2_000));
        if pop.edge.metric(tls_fast).await.unwrap_or(0.0) > 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no hit over TLS was answered from the loop");
}

/// A disk copy cut short after it was sent from its file once is a miss, never a short
/// answer: its length is checked each time it is opened.
#[tokio::test]
async fn a_disk_copy_cut_short_after_a_fast_answer_is_a_miss() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/1500000?cc=public,max-age=600";
    get(pop.setup.http(), path, &[]).await;
    until_fast(&pop, path).await;
    let bodies = crate::harness::entry_files(&pop, "body");
    assert_eq!(bodies.len(), 1);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&bodies[0])
        .expect("body file");
    file.set_len(700_000).expect("truncate");
    let after = get(pop.setup.http(), path, &[]).await;
    assert_eq!(after.cache_status(), "MISS");
    assert!(
        after.body == pattern_range(0..1_500_000),
        "the body differs"
    );
    assert_eq!(origin.hits_for("/bytes/1500000"), 2);
}

/// A copy refreshed by a 304 keeps its body but takes the 304's fields: after the refresh
/// the loop answers again, with those, never with the head it recorded before. From memory
/// (a new object in the tier) and from disk (the meta file rewritten in place) alike.
#[tokio::test]
async fn a_copy_refreshed_by_a_304_is_answered_again_with_its_new_fields() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    for size in [1_000u64, 1_500_000] {
        let path = format!("/bytes/{size}?cc=public,max-age=2&etag=v1&hit_header=X-Count");
        let first = get(pop.setup.http(), &path, &[]).await;
        assert_eq!(first.header("x-count"), "1");
        let fast = until_fast(&pop, &path).await;
        assert_eq!(fast.header("x-count"), "1");
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let refreshed = get(pop.setup.http(), &path, &[]).await;
        assert_eq!(refreshed.cache_status(), "REVALIDATED");
        assert_eq!(refreshed.header("x-count"), "2");
        let again = until_fast(&pop, &path).await;
        assert_eq!(
            again.header("x-count"),
            "2",
            "{size}: an answer from before the 304"
        );
        assert!(
            again.body == pattern_range(0..size),
            "{size}: the body differs"
        );
        assert_eq!(origin.hits_for(&format!("/bytes/{size}")), 2);
    }
}
