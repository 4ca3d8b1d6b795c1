//! Compression at the edge: text the core sends unencoded reaches clients in the best coding
//! they accept, each coding stored once; what the core encoded passes through, or is decoded
//! (up to a bound) for a client that cannot read it; and nothing that must not be coded is.

use crate::harness::origin::{decode, timeline_text, Origin};
use crate::harness::{get, pop_with_cache, pop_with_cache_config, send, Route};

const BROWSER: &str = "gzip, deflate, br, zstd";

fn coding_of(answer: &crate::harness::Answer) -> String {
    answer.header("content-encoding").to_string()
}

fn vary_has_accept_encoding(answer: &crate::harness::Answer) -> bool {
    answer
        .headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case("accept-encoding"))
}

#[tokio::test]
async fn json_reaches_each_client_in_the_best_coding_it_accepts() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let text = timeline_text(40 * 1024);
    for (i, (accept, coding)) in [
        (Some(BROWSER), "zstd"),
        (Some("gzip, deflate, br"), "br"),
        (Some("gzip"), "gzip"),
        (Some("br;q=0.5, gzip"), "gzip"),
        (Some("gzip;q=0.5, identity"), ""),
        (Some("deflate"), ""),
        (None, ""),
    ]
    .into_iter()
    .enumerate()
    {
        // A path of its own each time: the core's view of each request is checked.
        let path = format!("/text/40960?n={i}&cc=public,max-age=60&etag=v1");
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let answer = get(http, &path, &headers).await;
        assert_eq!(answer.status, 200);
        assert_eq!(coding_of(&answer), coding, "{accept:?}");
        assert!(
            decode(coding, &answer.body) == text,
            "{accept:?}: body differs"
        );
        assert!(vary_has_accept_encoding(&answer), "{accept:?}: no Vary");
        // The core is asked for the chosen coding alone.
        let asked = if coding.is_empty() {
            "identity"
        } else {
            coding
        };
        assert_eq!(answer.header("x-seen-accept-encoding"), asked, "{accept:?}");
        if coding.is_empty() {
            assert_eq!(answer.header("etag"), "\"v1\"");
            assert_eq!(answer.body.len(), text.len());
        } else {
            assert_eq!(answer.header("etag"), "W/\"v1\"");
            assert!(
                answer.body.len() * 5 < text.len(),
                "{coding}: {}",
                answer.body.len()
            );
        }
    }
}

#[tokio::test]
async fn each_coding_is_stored_once_and_hits_cost_no_compression() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = "/text/40960?cc=public,max-age=60";
    let text = timeline_text(40 * 1024);
    let spellings = [
        ("zstd", [BROWSER, "zstd;q=1, gzip;q=0.5", "ZSTD"]),
        ("br", ["gzip, deflate, br", "br;q=1, gzip;q=0.8", "br"]),
        (
            "gzip",
            ["gzip, deflate", "x-gzip", "gzip;q=0.9, identity;q=0.1"],
        ),
        ("", ["identity", "deflate", "gzip;q=0"]),
    ];
    for (coding, accepts) in &spellings {
        for (i, accept) in accepts.iter().enumerate() {
            let answer = get(http, path, &[("accept-encoding", accept)]).await;
            assert_eq!(coding_of(&answer), *coding, "{accept}");
            assert_eq!(
                answer.cache_status(),
                if i == 0 { "MISS" } else { "HIT" },
                "{accept}"
            );
            assert!(
                decode(coding, &answer.body) == text,
                "{accept}: body differs"
            );
        }
    }
    assert_eq!(origin.hits_for("/text/40960"), 4);
    // Hits were not compressed again: every coded byte went in on the three misses.
    let encoded_in = |coding: &'static str| {
        let edge = &pop.edge;
        async move {
            edge.metric(&format!(
                "edgecache_coded_bytes_total{{coding=\"{coding}\",operation=\"encode\",side=\"in\"}}"
            ))
            .await
        }
    };
    for coding in ["zstd", "br", "gzip"] {
        assert_eq!(
            encoded_in(coding).await,
            Some(text.len() as f64),
            "{coding}"
        );
    }
}

#[tokio::test]
async fn what_must_not_be_compressed_is_not() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        config.add_routes([Route::at("/oauth/").with("compress", "false")]);
    })
    .await;
    let http = pop.setup.http();
    let accept = [("accept-encoding", BROWSER)];
    for path in [
        // Not a listed type.
        "/text/40960?type=image/png",
        // Shorter than min_length.
        "/text/1000",
        // The core forbids transformation.
        "/text/40960?cc=no-transform",
        // The route says no.
        "/oauth/text/40960",
    ] {
        let answer = get(http, path, &accept).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(coding_of(&answer), "", "{path}");
        assert!(!answer.body.is_empty(), "{path}");
        assert!(!vary_has_accept_encoding(&answer), "{path}");
    }
    // A 206 from the core (the cache off, so the range goes to it) is sent as it came.
    let ranged = get(
        http,
        "/oauth/bytes/5000?h=Content-Type:text/html",
        &[("accept-encoding", BROWSER), ("range", "bytes=0-99")],
    )
    .await;
    assert_eq!((ranged.status, coding_of(&ranged)), (206, String::new()));
    assert_eq!(ranged.body.len(), 100);
}

#[tokio::test]
async fn a_body_the_core_encoded_passes_through_or_is_decoded_for_the_client() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let text = timeline_text(40 * 1024);
    let path = "/text/40960?encoded=gzip&cc=public,max-age=60";
    // Asked for gzip: it is the variant's coding, passed through and stored.
    let gzip = get(http, path, &[("accept-encoding", "gzip")]).await;
    assert_eq!(coding_of(&gzip), "gzip");
    assert!(decode("gzip", &gzip.body) == text);
    assert!(vary_has_accept_encoding(&gzip));
    assert_eq!(
        get(http, path, &[("accept-encoding", "gzip")])
            .await
            .cache_status(),
        "HIT"
    );
    // A client that takes no coding gets the text, decoded.
    let plain = get(http, path, &[]).await;
    assert_eq!(coding_of(&plain), "");
    assert!(plain.body == text, "decoded body differs");
    assert_eq!(plain.header("content-length"), "");
    // Stored as identity, its variant.
    assert_eq!(get(http, path, &[]).await.cache_status(), "HIT");
    // A client that prefers zstd but takes gzip gets the core's gzip, not stored under
    // zstd: another zstd client may not take gzip.
    let mixed = get(http, path, &[("accept-encoding", "zstd, gzip;q=0.5")]).await;
    assert_eq!(coding_of(&mixed), "gzip");
    assert_ne!(
        get(http, path, &[("accept-encoding", "zstd, gzip;q=0.5")])
            .await
            .cache_status(),
        "HIT"
    );
}

#[tokio::test]
async fn a_compression_bomb_from_the_core_is_cut_off_at_the_bound_and_not_stored() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "compression: { max_decoded_size: 1MiB }").await;
    let http = pop.setup.http();
    // 64 MiB of zeros, about 64 KiB gzipped.
    let path = "/text/67108864?encoded=gzip&fill=zero&cc=public,max-age=60";
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = client
        .get(format!("http://{http}{path}"))
        .send()
        .await
        .expect("answer");
    // Whether the header went out before the bound was passed or not, the client never
    // gets megabytes of zeros: an error answer, or a body cut off at the bound.
    let status = resp.status().as_u16();
    assert!(resp.headers().get("content-encoding").is_none());
    let body = resp.bytes().await;
    match status {
        502 => assert!(body.expect("error body").len() < 1024),
        200 => assert!(
            body.map_or(true, |b| b.len() <= 1 << 20),
            "a whole body came"
        ),
        other => panic!("status {other}"),
    }
    pop.edge
        .wait_metric("edgecache_coding_skipped_total{reason=\"too_large\"}", 1.0)
        .await;
    // Nothing was stored from it: the next request goes to the core again.
    let _ = client.get(format!("http://{http}{path}")).send().await;
    assert_eq!(origin.hits_for("/text/67108864"), 2);
}

#[tokio::test]
async fn a_head_gets_the_header_a_get_would() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = "/text/40960?cc=public,max-age=60";
    let head = send(
        reqwest::Method::HEAD,
        http,
        path,
        &[("accept-encoding", "br")],
    )
    .await;
    assert_eq!(coding_of(&head), "br");
    assert!(head.body.is_empty());
    let hit = get(http, path, &[("accept-encoding", "br")]).await;
    assert_eq!(
        (hit.cache_status(), coding_of(&hit)),
        ("HIT", "br".to_string())
    );
    assert!(decode("br", &hit.body) == timeline_text(40 * 1024));
}

#[tokio::test]
async fn a_stored_response_is_compressed_harder_than_one_that_passes() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let text = timeline_text(100 * 1024);
    for coding in ["zstd", "br", "gzip"] {
        let accept = [("accept-encoding", coding)];
        let kept = get(http, "/text/102400?cc=public,max-age=60", &accept).await;
        let passing = get(http, "/text/102400?cc=no-store", &accept).await;
        assert_eq!(
            (coding_of(&kept), coding_of(&passing)),
            (coding.to_string(), coding.to_string())
        );
        assert!(decode(coding, &kept.body) == text && decode(coding, &passing.body) == text);
        assert!(
            kept.body.len() < passing.body.len(),
            "{coding}: stored {} bytes, passing {}",
            kept.body.len(),
            passing.body.len()
        );
    }
}

#[tokio::test]
async fn a_coded_copy_revalidated_by_a_304_keeps_its_weak_etag_and_its_body() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = "/text/40960?cc=max-age=1&etag=v1";
    let accept = [("accept-encoding", "br")];
    let first = get(http, path, &accept).await;
    assert_eq!(first.header("etag"), "W/\"v1\"");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let revalidated = get(http, path, &accept).await;
    assert_eq!(revalidated.cache_status(), "REVALIDATED");
    assert_eq!(revalidated.header("etag"), "W/\"v1\"");
    assert_eq!(coding_of(&revalidated), "br");
    assert!(decode("br", &revalidated.body) == timeline_text(40 * 1024));
    assert_eq!(origin.hits_for("/text/40960"), 2);
}

#[tokio::test]
async fn signed_requests_and_digested_bodies_are_left_alone() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    // An ActivityPub delivery or fetch signed with HTTP Signatures: its Accept-Encoding
    // may be signed, so it reaches the core as it was sent.
    let signed = get(
        http,
        "/text/40960?cc=no-store",
        &[
            ("accept-encoding", "gzip"),
            (
                "signature",
                "keyId=\"https://example.social/actor#main-key\",signature=\"x\"",
            ),
        ],
    )
    .await;
    assert_eq!(signed.header("x-seen-accept-encoding"), "gzip");
    assert_eq!(coding_of(&signed), "");
    // A digest of the content would not match a coded body.
    let digested = get(
        http,
        "/text/40960?h=Content-Digest:sha-256=:AAAA:",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(coding_of(&digested), "");
    assert_eq!(digested.body.len(), 40 * 1024);
}

#[tokio::test]
async fn a_coding_the_pop_does_not_know_is_the_resources_own_and_is_stored_as_it_came() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = "/text/40960?cc=public,max-age=60&h=Content-Encoding:x-custom";
    for (i, accept) in ["gzip", "br", ""].into_iter().enumerate() {
        let answer = get(http, path, &[("accept-encoding", accept)]).await;
        assert_eq!(coding_of(&answer), "x-custom");
        assert_eq!(answer.body.len(), 40 * 1024);
        assert!(!vary_has_accept_encoding(&answer));
        assert_eq!(answer.cache_status(), if i == 0 { "MISS" } else { "HIT" });
    }
    assert_eq!(origin.hits_for("/text/40960"), 1);
}

#[tokio::test]
async fn an_http2_client_gets_a_coded_copy_and_then_the_stored_one() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let text = timeline_text(40 * 1024);
    let path = "/text/40960?cc=public,max-age=60";
    let h2 = crate::harness::https_client(
        &[pop.cert.pem.as_str()],
        &["hachyderm.example"],
        pop.setup.https(),
        false,
    );
    let mut bodies = Vec::new();
    for expected in ["MISS", "HIT"] {
        let resp = h2
            .get(format!(
                "https://hachyderm.example:{}{path}",
                pop.setup.https().port()
            ))
            .header("accept-encoding", "zstd")
            .send()
            .await
            .expect("h2 request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.headers()["content-encoding"], "zstd");
        assert_eq!(resp.headers()["x-cache-status"], expected);
        let body = resp.bytes().await.expect("h2 body");
        assert!(decode("zstd", &body) == text, "{expected}: body differs");
        bodies.push(body);
    }
    assert!(bodies[0] == bodies[1], "the hit is not the stored copy");
    assert_eq!(origin.hits_for("/text/40960"), 1);
}
