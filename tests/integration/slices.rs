//! Large objects fetched and stored as aligned slices: a range request costs the origin only
//! the slices it covers, a cold range gets its 206 at once, and slices of two versions of
//! an object never mix.

use std::time::Duration;

use crate::harness::origin::{pattern_range, versioned_range, Origin};
use crate::harness::{get, pop_with_cache_config, send, CachingPop, Route};

/// The slice size of these tests.
pub(crate) const SLICE: u64 = 256 * 1024;

/// A PoP whose `/bytes/` route slices at [`SLICE`].
pub(crate) async fn slicing_pop(origin: &Origin) -> CachingPop {
    pop_with_cache_config(origin, |config, _| {
        config.add_sections("cache: { slice_size: 256KiB }");
        config.add_routes([Route::at("/bytes/").with("slice", "true")]);
    })
    .await
}

pub(crate) fn range_of(index: u64) -> String {
    format!("bytes={}-{}", index * SLICE, (index + 1) * SLICE - 1)
}

#[tokio::test]
async fn a_cold_range_costs_the_origin_only_the_slices_it_covers() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 3_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    let object = format!("/bytes/{size}");

    // The iOS player's first probe: two bytes, and the object's length.
    let probe = get(pop.setup.http(), &path, &[("Range", "bytes=0-1")]).await;
    assert_eq!(probe.status, 206);
    assert_eq!(probe.header("content-range"), format!("bytes 0-1/{size}"));
    assert!(probe.body == pattern_range(0..2));
    assert_eq!(origin.ranges_for(&object), vec![range_of(0)]);
    assert_eq!(origin.body_bytes(), SLICE);

    // A seek into the middle: one more slice.
    let seek = get(
        pop.setup.http(),
        &path,
        &[("Range", "bytes=2000000-2000099")],
    )
    .await;
    assert_eq!(seek.status, 206);
    assert_eq!(
        seek.header("content-range"),
        format!("bytes 2000000-2000099/{size}")
    );
    assert!(seek.body == pattern_range(2_000_000..2_000_100));
    assert_eq!(origin.ranges_for(&object), vec![range_of(0), range_of(7)]);

    // An open-ended range across a slice boundary: the slices it covers, once each.
    let tail = get(pop.setup.http(), &path, &[("Range", "bytes=1900000-")]).await;
    assert_eq!(tail.status, 206);
    assert!(tail.body == pattern_range(1_900_000..size));
    let fetched = origin.ranges_for(&object);
    for index in 7..12 {
        assert_eq!(
            fetched.iter().filter(|r| **r == range_of(index)).count(),
            1,
            "slice {index} in {fetched:?}"
        );
    }

    // The whole object, streamed from slices: only the ones not yet stored are fetched.
    let whole = get(pop.setup.http(), &path, &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-length"), size.to_string());
    assert!(whole.body == pattern_range(0..size));
    assert_eq!(origin.hits_for(&object), 12);
    assert_eq!(origin.body_bytes(), size);

    // From then on, every answer comes from the PoP.
    let again = get(pop.setup.http(), &path, &[]).await;
    assert!(again.body == pattern_range(0..size));
    assert_eq!(again.cache_status(), "HIT");
    let suffix = get(pop.setup.http(), &path, &[("Range", "bytes=-100")]).await;
    assert_eq!(suffix.status, 206);
    assert!(suffix.body == pattern_range(size - 100..size));
    assert_eq!(origin.hits_for(&object), 12);

    // The operator sees what the origin was asked for against what clients got.
    let edge = &pop.pop.edge;
    let sample = |name: &str| format!("edgecache_{name}{{route=\"/bytes/\"}}");
    edge.wait_metric(&sample("slice_fetched_bytes_total"), size as f64)
        .await;
    let served = 2 + 100 + (size - 1_900_000) + 2 * size + 100;
    edge.wait_metric(&sample("slice_served_bytes_total"), served as f64)
        .await;
    edge.wait_metric(
        "edgecache_slices_total{outcome=\"miss\",route=\"/bytes/\"}",
        12.0,
    )
    .await;
}

#[tokio::test]
async fn unsatisfiable_ranges_get_416_with_the_length_even_on_a_miss() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 600_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    let answer = get(pop.setup.http(), &path, &[("Range", "bytes=9000000-")]).await;
    assert_eq!(answer.status, 416);
    assert_eq!(answer.header("content-range"), format!("bytes */{size}"));
    assert!(answer.body.is_empty());
    // The same from what is stored.
    get(pop.setup.http(), &path, &[("Range", "bytes=0-0")]).await;
    let stored = get(pop.setup.http(), &path, &[("Range", "bytes=600000-")]).await;
    assert_eq!(stored.status, 416);
    assert_eq!(stored.header("content-range"), format!("bytes */{size}"));
}

#[tokio::test]
async fn a_multi_range_request_gets_its_parts_from_the_slices() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 2_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    let answer = get(
        pop.setup.http(),
        &path,
        &[("Range", "bytes=10-19,1500000-1500009")],
    )
    .await;
    assert_eq!(answer.status, 206);
    assert!(answer
        .header("content-type")
        .starts_with("multipart/byteranges; boundary="));
    let text = answer.body.clone();
    let contains = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    assert!(contains(&pattern_range(10..20)));
    assert!(contains(&pattern_range(1_500_000..1_500_010)));
    assert!(contains(
        format!("Content-Range: bytes 1500000-1500009/{size}").as_bytes()
    ));
    assert_eq!(
        answer.header("content-length"),
        answer.body.len().to_string()
    );
    // Two slices, not the eight between them.
    assert_eq!(
        origin.ranges_for(&format!("/bytes/{size}")),
        vec![range_of(0), range_of(5)]
    );
}

#[tokio::test]
async fn many_clients_missing_one_slice_cost_one_origin_request() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 5_000_000u64;
    // Slow enough that every client arrives while the first fetch is on its way.
    let path = format!("/bytes/{size}?cc=public,max-age=600&delay_ms=20&chunk=16384");
    let base = pop.setup.http();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(
                async move { get(base, &path, &[("Range", "bytes=3000000-3000999")]).await },
            )
        })
        .collect();
    for client in clients {
        let answer = client.await.expect("client");
        assert_eq!(answer.status, 206);
        assert!(answer.body == pattern_range(3_000_000..3_001_000));
    }
    assert_eq!(
        origin.ranges_for(&format!("/bytes/{size}")),
        vec![range_of(11)]
    );
}

#[tokio::test]
async fn a_changed_object_never_mixes_its_slices_with_the_old_ones() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 1_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&versioned=1");
    // Slice 0 of the first version is stored.
    let first = get(pop.setup.http(), &path, &[("Range", "bytes=0-9")]).await;
    assert!(first.body == versioned_range(0..10, 0));
    origin.change_content();
    // The rest comes from the new version: the answer is broken off, never mixed.
    let url = format!("http://{}{path}", pop.setup.http());
    let mixed = reqwest::get(&url).await.expect("answer head");
    assert_eq!(mixed.status(), 200);
    let body = mixed.bytes().await;
    assert!(
        body.is_err(),
        "a body mixed from two versions was sent whole"
    );
    // The old slices are gone: the next answer is the new version throughout.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = get(pop.setup.http(), &path, &[]).await;
    assert_eq!(after.status, 200);
    assert!(after.body == versioned_range(0..size, 1));
    assert_eq!(after.header("etag"), "\"g1\"");
}

#[tokio::test]
async fn a_purge_of_the_url_removes_every_slice() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 1_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    let object = format!("/bytes/{size}");
    get(pop.setup.http(), &path, &[]).await;
    assert_eq!(origin.hits_for(&object), 4);
    let host = pop.setup.http();
    let (status, _) = pop
        .purge(&format!(
            "url=http://{host}/bytes/{size}%3Fcc%3Dpublic,max-age%3D600"
        ))
        .await;
    assert_eq!(status, 200);
    let after = get(pop.setup.http(), &path, &[]).await;
    assert!(after.body == pattern_range(0..size));
    assert_eq!(origin.hits_for(&object), 8);
}

#[tokio::test]
async fn head_and_conditional_requests_are_answered_from_the_first_slice() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 3_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&etag=v1");
    let object = format!("/bytes/{size}");
    let head = send(reqwest::Method::HEAD, pop.setup.http(), &path, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), size.to_string());
    assert_eq!(head.header("etag"), "\"v1\"");
    assert!(head.body.is_empty());
    // The origin was asked for slice 0 alone, as a GET.
    assert_eq!(origin.ranges_for(&object), vec![range_of(0)]);
    assert_eq!(origin.methods_for(&object), vec!["GET"]);

    let unchanged = get(pop.setup.http(), &path, &[("If-None-Match", "\"v1\"")]).await;
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());
    let changed = get(
        pop.setup.http(),
        &path,
        &[("If-None-Match", "\"v0\""), ("Range", "bytes=5-9")],
    )
    .await;
    assert_eq!(changed.status, 206);
    assert!(changed.body == pattern_range(5..10));
    // If-Range that does not match: the whole object, from slices.
    let whole = get(
        pop.setup.http(),
        &path,
        &[("Range", "bytes=5-9"), ("If-Range", "\"v0\"")],
    )
    .await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == pattern_range(0..size));
    assert_eq!(origin.hits_for(&object), 12);
}

#[tokio::test]
async fn a_zero_length_suffix_is_unsatisfiable() {
    let origin = Origin::start().await;
    let size = 300_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    // A PoP that slices and one that stores whole objects answer alike, on a miss and
    // from what they stored.
    for pop in [
        slicing_pop(&origin).await,
        pop_with_cache_config(&origin, |_, _| {}).await,
    ] {
        for _ in 0..2 {
            let answer = get(pop.setup.http(), &path, &[("Range", "bytes=-0")]).await;
            assert_eq!(answer.status, 416);
            assert_eq!(answer.header("content-range"), format!("bytes */{size}"));
            // A zero-length suffix next to a satisfiable range is only left out.
            let both = get(pop.setup.http(), &path, &[("Range", "bytes=-0,0-3")]).await;
            assert_eq!(both.status, 206);
            assert!(both.body == pattern_range(0..4));
        }
    }
}

#[tokio::test]
async fn a_server_that_ignores_ranges_is_answered_from_its_whole_object() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        config.add_routes([Route::at("/text/").with("slice", "true")]);
    })
    .await;
    let path = "/text/100000?cc=public,max-age=600";
    let whole = get(pop.setup.http(), path, &[]).await;
    assert_eq!(whole.status, 200);
    let range = get(pop.setup.http(), path, &[("Range", "bytes=10-19")]).await;
    assert_eq!(range.status, 206);
    assert_eq!(range.header("content-range"), "bytes 10-19/100000");
    assert_eq!(range.body, whole.body[10..20]);
    assert_eq!(range.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/text/100000"), 1);
}

#[tokio::test]
async fn an_http2_client_gets_its_range_from_slices() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        config.add_sections("cache: { slice_size: 256KiB }");
        config.add_routes([Route::at("/bytes/").with("slice", "true")]);
        config.listener("http").h2c = true;
    })
    .await;
    let size = 1_000_000u64;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let url = format!(
        "http://{}/bytes/{size}?cc=public,max-age=600",
        pop.setup.http()
    );
    for _ in 0..2 {
        let resp = client
            .get(&url)
            .header("Range", "bytes=500000-500009")
            .send()
            .await
            .expect("h2 request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 206);
        let body = resp.bytes().await.expect("body");
        assert!(body.as_ref() == pattern_range(500_000..500_010));
    }
    assert_eq!(origin.hits_for(&format!("/bytes/{size}")), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_back_two_slices_past_the_socket_buffers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 64 * 1024 * 1024u64;
    let object = format!("/bytes/{size}");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(16 * 1024)
        .expect("small receive buffer");
    let mut stream = socket.connect(pop.setup.http()).await.expect("connect");
    stream
        .write_all(
            format!("GET {object}?cc=public,max-age=600 HTTP/1.1\r\nHost: example.social\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
    let mut head = [0u8; 4096];
    let read = stream.read(&mut head).await.expect("first bytes");
    assert!(head[..read].starts_with(b"HTTP/1.1 200"));
    // The client reads nothing more. The PoP may fill the kernel's buffers of the
    // connection (its send buffer grows up to tcp_wmem's maximum) and hold the slice being
    // sent and the one after it; it asks the origin for nothing beyond.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let send_buffer_max: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .expect("tcp_wmem")
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("tcp_wmem maximum");
    let in_buffers = (send_buffer_max + 64 * 1024).div_ceil(SLICE);
    let asked = origin.ranges_for(&object).len() as u64;
    assert!(
        asked <= in_buffers + 2,
        "{asked} slices asked of the origin with the client stalled (buffers hold {in_buffers})"
    );
    assert!(asked < size / SLICE / 4);
}
