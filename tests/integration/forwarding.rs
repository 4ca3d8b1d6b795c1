//! Forwarding to the core: groups chosen by route, no duplicate writes, request ids, body
//! limits and what the edge answers when the core cannot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::direct_forwarding::direct_forwards;
use crate::harness::client::raw_exchange;
use crate::harness::edge::{Edge, EdgeSetup, TestCert};
use crate::harness::origin::Origin;
use crate::harness::{edge_with_groups, Route};

async fn send(address: SocketAddr, request: &str) -> String {
    raw_exchange(address, request.as_bytes()).await
}

#[tokio::test]
async fn a_route_sends_its_requests_to_its_group() {
    let web = Origin::start().await;
    let streaming = Origin::start().await;
    let (_edge, setup) = edge_with_groups(
        &[web.address],
        streaming.address,
        vec![Route::at("/api/v1/streaming")
            .upstream("streaming")
            .cache(false)],
    )
    .await;
    let answer = send(
        setup.http(),
        "GET /api/v1/streaming/health HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = send(
        setup.http(),
        "GET /api/v1/timelines/public HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(streaming.hits_for("/api/v1/streaming/health"), 1);
    assert_eq!(web.hits_for("/api/v1/streaming/health"), 0);
    assert_eq!(web.hits_for("/api/v1/timelines/public"), 1);
}

/// A host that accepts connections, reads each request head, counts it and hangs up
/// without answering: a core process dying mid-request.
struct Hangup {
    address: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Hangup {
    /// Hangs up with a FIN: the PoP reads the end of the connection.
    async fn start() -> Hangup {
        Hangup::spawn(false).await
    }

    /// Hangs up with a RST: the PoP's read fails with "connection reset".
    async fn start_resetting() -> Hangup {
        Hangup::spawn(true).await
    }

    async fn spawn(reset: bool) -> Hangup {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            counter.fetch_add(1, Ordering::SeqCst);
                            if reset {
                                let _ = stream.set_zero_linger();
                            }
                            return;
                        }
                    }
                });
            }
        });
        Hangup {
            address,
            requests,
            task,
        }
    }
}

impl Drop for Hangup {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_post_that_failed_at_a_host_is_never_sent_again() {
    let hangup = Hangup::start().await;
    let good = Origin::start().await;
    // Both hosts pass the TCP health check; round robin sends every other request to the
    // one that hangs up.
    let (_edge, setup) =
        edge_with_groups(&[hangup.address, good.address], good.address, vec![]).await;
    let mut failed = 0;
    for n in 0..6 {
        let body = format!("status={n}");
        let request = format!(
            "POST /api/v1/statuses/{n} HTTP/1.1\r\nHost: a.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = send(setup.http(), &request).await;
        if answer.starts_with("HTTP/1.1 502") {
            failed += 1;
            assert!(
                answer.contains("Retry-After: 5") || answer.contains("retry-after: 5"),
                "{answer}"
            );
        } else {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    assert!(
        failed >= 1,
        "round robin must have sent some POSTs to the host that hangs up"
    );
    assert_eq!(hangup.requests.load(Ordering::SeqCst), failed);
    // Each POST reached exactly one host once: the good one saw only the others.
    let mut good_posts = 0;
    for n in 0..6 {
        let hits = good.hits_for(&format!("/api/v1/statuses/{n}"));
        assert!(hits <= 1, "POST {n} arrived {hits} times");
        good_posts += hits;
    }
    assert_eq!(good_posts + failed, 6);
}

/// Sends GETs to a group of a host that hangs up on every request and a good one: each
/// must be answered, by the good host, once.
async fn gets_a_host_hung_up_on_are_answered_by_the_other(hangup: Hangup) {
    let good = Origin::start().await;
    let (_edge, setup) =
        edge_with_groups(&[hangup.address, good.address], good.address, vec![]).await;
    for n in 0..6 {
        let request = format!(
            "GET /api/v1/accounts/{n} HTTP/1.1\r\nHost: a.example\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n"
        );
        let answer = send(setup.http(), &request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "GET {n}: {answer}");
        assert_eq!(good.hits_for(&format!("/api/v1/accounts/{n}")), 1);
    }
    // Round robin sent some to the host that hangs up, each on a new connection.
    assert!(hangup.requests.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_get_a_host_hung_up_on_goes_to_another_host() {
    gets_a_host_hung_up_on_are_answered_by_the_other(Hangup::start().await).await;
}

#[tokio::test]
async fn a_get_a_host_reset_goes_to_another_host() {
    gets_a_host_hung_up_on_are_answered_by_the_other(Hangup::start_resetting().await).await;
}

#[tokio::test]
async fn a_get_a_lone_host_hung_up_on_is_a_502_sent_once() {
    let hangup = Hangup::start().await;
    let (_edge, setup) = edge_with_groups(&[hangup.address], hangup.address, vec![]).await;
    let answer = send(
        setup.http(),
        "GET /api/v1/accounts/1 HTTP/1.1\r\nHost: a.example\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // A host that broke a new connection is not sent the same request again.
    assert_eq!(hangup.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_ids_are_passed_on_or_made_and_returned() {
    let web = Origin::start().await;
    let (_edge, setup) = edge_with_groups(&[web.address], web.address, vec![]).await;
    let answer = send(
        setup.http(),
        "GET /a HTTP/1.1\r\nHost: a.example\r\nX-Request-Id: trace-42\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.contains("\"x-request-id\":[\"trace-42\"]") || answer.contains("trace-42"),
        "{answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-request-id: trace-42"),
        "{answer}"
    );
    let made = send(
        setup.http(),
        "GET /b HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let id = made
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id: ")
                .map(str::to_string)
        })
        .expect("an id on the response");
    assert_eq!(id.len(), 32, "{made}");
    assert!(made.contains(&id[..16]), "the core got it too: {made}");
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413() {
    let web = Origin::start().await;
    let (_edge, setup) = edge_with_groups(
        &[web.address],
        web.address,
        vec![Route::at("/api/v2/media").with("max_body_size", "1KiB")],
    )
    .await;
    let body = "x".repeat(2000);
    let declared = format!("POST /api/v2/media/declared HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{body}");
    let answer = send(setup.http(), &declared).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let chunked = format!("POST /api/v2/media/chunked HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n");
    let answer = send(setup.http(), &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let small = "POST /api/v2/media/small HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    assert!(send(setup.http(), small).await.starts_with("HTTP/1.1 200"));
    // A declared length over the limit is refused before anything goes to the core; a
    // chunked body is cut off where it crosses the limit (its head may have gone ahead).
    assert_eq!(web.hits_for("/api/v2/media/declared"), 0);
    assert!(web.hits_for("/api/v2/media/chunked") <= 1);
    assert_eq!(web.hits_for("/api/v2/media/small"), 1);
}

/// With every host down by its health check the hosts are still tried (the last one may be
/// back); only a host whose connect failed a moment ago is skipped, with a fast 503.
#[tokio::test]
async fn a_host_that_just_refused_is_a_fast_503_with_retry_after() {
    let dead = crate::harness::edge::free_address();
    let (edge, setup) = edge_with_groups(&[dead], dead, vec![]).await;
    edge.wait_ready_status(503).await;
    let request = "GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    let tried = send(setup.http(), request).await;
    assert!(tried.starts_with("HTTP/1.1 502"), "{tried}");
    let answer = send(setup.http(), request).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 5"),
        "{answer}"
    );
}

#[tokio::test]
async fn headers_the_core_must_not_leak_are_hidden() {
    let web = Origin::start().await;
    let (_edge, setup) = edge_with_groups(&[web.address], web.address, vec![]).await;
    let answer = send(
        setup.http(),
        "GET /about?h=Server:Puma%206.4&h=X-Runtime:0.123&h=X-Powered-By:Rails&h=X-Kept:yes HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-kept: yes"), "{head}");
    for hidden in ["server:", "x-runtime:", "x-powered-by:"] {
        assert!(!head.contains(hidden), "{hidden} leaked: {head}");
    }
}

/// A core endpoint that reads a whole upload, counts its bytes and answers with the count.
async fn upload_sink() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let body_start = loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
                let Some(length) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                else {
                    return;
                };
                let mut received = (head.len() - body_start) as u64;
                while received < length {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => received += n as u64,
                    }
                }
                let answer = received.to_string();
                let _ = stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len())
                            .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (address, task)
}

/// Peak resident memory of a process so far, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_100_mib_upload_streams_through_without_raising_memory() {
    let (sink, _task) = upload_sink().await;
    let (edge, setup) = edge_with_groups(
        &[sink],
        sink,
        vec![Route::at("/api/v2/media")
            .cache(false)
            .with("max_body_size", "200MiB")],
    )
    .await;
    // Warm up the path so the first request's one-off allocations are not counted.
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v2/media", setup.http());
    let warm = client
        .post(&url)
        .body(vec![b'w'; 1024 * 1024])
        .send()
        .await
        .expect("warm up");
    assert_eq!(warm.text().await.expect("text"), (1024 * 1024).to_string());
    let before = peak_rss_kib(edge.pid());

    let total: u64 = 100 * 1024 * 1024;
    let chunk = bytes::Bytes::from(vec![b'v'; 256 * 1024]);
    let chunks = (total / chunk.len() as u64) as usize;
    let body = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let resp = client
        .post(&url)
        .header("content-length", total.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("text"), total.to_string());
    let after = peak_rss_kib(edge.pid());
    let grew = after.saturating_sub(before);
    eprintln!(
        "edgecache peak RSS {before} KiB before, {after} KiB after a 100 MiB upload (+{grew} KiB)"
    );
    assert!(grew < 16 * 1024, "peak RSS grew by {grew} KiB");
}

#[tokio::test]
async fn killing_a_host_under_load_fails_no_get() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let a_address = a.address;
    let (edge, setup) = edge_with_groups(&[a.address, b.address], b.address, vec![]).await;
    edge.wait_ready_status(200).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let stop = stop.clone();
        let url = format!("http://{}/api/v1/timelines/public?w={w}", setup.http());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match client.get(&url).send().await {
                    Ok(resp) if resp.status() == 200 => ok += 1,
                    Ok(resp) => failed.push(resp.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let a_served_before_kill = a.hits();
    let killed_at = std::time::Instant::now();
    drop(a);
    // Detection: the first failed request ejects the host, the health check marks it down.
    let down = format!("edgecache_core_host_up{{group=\"web\",host=\"{a_address}\"}}");
    edge.wait_metric(&down, 0.0).await;
    let detected = killed_at.elapsed();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total_ok = 0;
    for worker in workers {
        let (ok, failed) = worker.await.expect("worker");
        assert!(
            failed.is_empty(),
            "failed GETs: {failed:?}\nedge log:\n{}",
            edge.stderr_text()
        );
        total_ok += ok;
    }
    eprintln!(
        "failover: {total_ok} GETs, 0 failed; host marked down by its health check {} ms after the kill",
        detected.as_millis()
    );
    assert!(
        a_served_before_kill > 0,
        "both hosts took load before the kill"
    );
    assert!(b.hits() > 0);
}

#[tokio::test]
async fn a_group_total_timeout_bounds_the_whole_exchange() {
    let web = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    // read_timeout stays 3s; the whole exchange may take 1s.
    let mut config = setup.config(&[&cert], &[web.address], "");
    config.group("web").total_timeout = Some("1s".to_string());
    let path = setup.write_config(&config);
    let _edge = Edge::start(&setup, &path).await;
    // A head that takes 2.5 s: within read_timeout, past total_timeout.
    let slow_head = send(
        setup.http(),
        "GET /slow/2500 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(slow_head.starts_with("HTTP/1.1 504"), "{slow_head}");
    // A body trickling in over 2 s: every read is quick, the whole is not.
    let client = reqwest::Client::new();
    let url = format!(
        "http://{}/bytes/200000?chunk=10000&delay_ms=100&cc=no-store",
        setup.http()
    );
    let whole = match client.get(&url).send().await {
        Ok(resp) => resp.bytes().await.is_ok_and(|b| b.len() == 200_000),
        Err(_) => false,
    };
    assert!(!whole, "the trickling body was not cut at total_timeout");
    // A quick exchange is untouched.
    let quick = send(
        setup.http(),
        "GET /quick HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(quick.starts_with("HTTP/1.1 200"), "{quick}");
}

/// A lone core host marked down by its health check is used by the first request after it
/// is back, not after its next passing check (nginx never marks its last server down).
#[tokio::test]
async fn a_lone_core_host_that_comes_back_is_used_at_once() {
    let address = crate::harness::edge::free_address();
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut checked_rarely = setup.config(&[&cert], &[address], "");
    checked_rarely.group("web").health().interval = "60s".to_string();
    let path = setup.write_config(&checked_rarely);
    let edge = Edge::start(&setup, &path).await;
    // The check at start found nothing listening; the next one is a minute away.
    edge.wait_ready_status(503).await;
    let core = Origin::start_at(address).await;
    let answer = send(
        setup.http(),
        "GET /back HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(core.hits_for("/back"), 1);
    assert_eq!(
        edge.admin_get("/readyz").await.0,
        503,
        "no health check has run since"
    );
}

/// A lone core host that takes connections into a full backlog and never answers them: with
/// its health check failed, one request at a time tries it (and waits out the connect
/// timeout), while the others get a fast 503 instead of each waiting the same timeout.
#[tokio::test]
async fn a_host_that_never_answers_is_tried_by_one_request_at_a_time() {
    use socket2::{Domain, Socket, Type};
    // A listener with a backlog of nothing, filled: further connects hang.
    let blackhole = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let address = crate::harness::edge::free_address();
    blackhole.bind(&address.into()).expect("bind");
    blackhole.listen(0).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let filler = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        filler.set_nonblocking(true).expect("nonblocking");
        let _ = filler.connect(&address.into());
        fillers.push(filler);
    }
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let mut config = setup.config(&[&cert], &[address], "");
    config.group("web").health().interval = "60s".to_string();
    let path = setup.write_config(&config);
    let edge = Edge::start(&setup, &path).await;
    // The check at start waits out its connect timeout, then finds the host down.
    edge.wait_metric(
        &format!("edgecache_core_host_up{{group=\"web\",host=\"{address}\"}}"),
        0.0,
    )
    .await;
    // pingora flips the host's state right after our check records it; allow it that moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let requests: Vec<_> = (0..6)
        .map(|i| {
            let address = setup.http();
            tokio::spawn(async move {
                let request = format!(
                    "GET /hang/{i} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
                );
                crate::harness::client::raw_status(&send(address, &request).await)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.expect("request"));
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![
            Some(502),
            Some(503),
            Some(503),
            Some(503),
            Some(503),
            Some(503)
        ],
        "one trial, the rest refused at once"
    );
    drop(fillers);
}

#[tokio::test]
async fn forwarded_gets_share_a_core_connection_that_may_close_between_them() {
    let web = Origin::start().await;
    let address = web.address;
    let (edge, setup) = edge_with_groups(&[address], address, vec![]).await;
    // Signed in: never cached, so every one is forwarded.
    let signed_in = [("authorization", "Bearer t")];
    let first = crate::harness::client::get(setup.http(), "/api/v1/accounts/1", &signed_in).await;
    assert_eq!(first.status, 200);
    let second = crate::harness::client::get(setup.http(), "/api/v1/accounts/2", &signed_in).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        first.json()["peer"],
        second.json()["peer"],
        "the second request must reuse the first one's connection to the core"
    );
    let received = edge
        .metric(r#"edgecache_upstream_body_bytes_total{direction="down",group="web"}"#)
        .await
        .unwrap_or(0.0);
    let bodies = (first.body.len() + second.body.len()) as f64;
    assert_eq!(received, bodies, "body bytes from the core are counted");
    assert_eq!(direct_forwards(&edge).await, 2.0);

    // The core restarts: the idle connection the PoP kept is closed under it.
    drop(web);
    // The dropped origin's listener closes as its task is cancelled.
    for _ in 0..100 {
        if std::net::TcpListener::bind(address).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let web = Origin::start_at(address).await;
    for n in 3..6 {
        let answer =
            crate::harness::client::get(setup.http(), &format!("/api/v1/accounts/{n}"), &signed_in)
                .await;
        assert_eq!(answer.status, 200, "request {n} after the restart");
    }
    assert_eq!(web.hits(), 3);
    // The first after the restart goes through pingora's path instead when the close had
    // not arrived before its request was written.
    let direct = direct_forwards(&edge).await;
    assert!((4.0..=5.0).contains(&direct), "{direct}");
}

#[tokio::test]
async fn only_body_less_requests_the_cache_leaves_alone_are_forwarded_directly() {
    let origin = Origin::start().await;
    let pop = crate::harness::pops::pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let signed_in = [("authorization", "Bearer t")];
    let path = "/api/v1/timelines/home?cc=public,max-age=60";
    let answer = crate::harness::client::get(http, path, &signed_in).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.cache_status(), "BYPASS");
    let head = crate::harness::client::send(reqwest::Method::HEAD, http, path, &signed_in).await;
    assert_eq!(head.status, 200);
    assert_eq!(direct_forwards(&pop.edge).await, 2.0);

    // A response the cache keeps is fetched by pingora's path, which fills the cache.
    let kept = crate::harness::client::get(http, "/@alice?cc=public,max-age=60", &[]).await;
    assert_eq!(kept.cache_status(), "MISS");
    // So is a request with a body.
    let posted = send(
        http,
        "POST /api/v1/statuses HTTP/1.1\r\nHost: a.example\r\nAuthorization: Bearer t\r\nContent-Length: 7\r\nConnection: close\r\n\r\nstatus=",
    )
    .await;
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");
    assert_eq!(direct_forwards(&pop.edge).await, 2.0);
    assert_eq!(origin.hits(), 4);
}
