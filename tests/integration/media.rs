//! Media routes: the try_files chain over a real S3-compatible store (s3s-fs, which checks
//! SigV4), an old server over HTTP (the test origin) and a legacy directory.

use std::time::Duration;

use crate::harness::client::raw_exchange;
use crate::harness::origin::{pattern_range, Origin};
use crate::harness::s3::S3Server;
use crate::harness::{get, media_pop, pop_with_cache_config, MediaRoute, Route, Store};
#[tokio::test]
async fn the_first_place_that_has_the_object_answers() {
    let media = media_pop(&["spaces", "disk", "old"], "/bytes/", &[], &[]).await;
    media
        .s3
        .put("accounts/avatars/a.png", b"from the store")
        .await;
    media.legacy_file("accounts/avatars/a.png", b"stale copy on the old disk");
    media.legacy_file("media_attachments/b.jpg", b"only on the old disk");
    let http = media.pop.setup.http();

    let from_store = get(http, "/system/accounts/avatars/a.png", &[]).await;
    assert_eq!(from_store.status, 200);
    assert_eq!(from_store.body, b"from the store");
    assert_eq!(from_store.header("content-type"), "image/png");
    assert_eq!(from_store.header("content-length"), "14");
    assert!(!from_store.header("etag").is_empty());
    assert!(!from_store.header("last-modified").is_empty());
    assert_eq!(
        from_store.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert!(
        from_store
            .headers
            .keys()
            .all(|name| !name.as_str().starts_with("x-amz-")),
        "{:?}",
        from_store.headers
    );

    // Reading never changes what the store holds.
    assert_eq!(
        media.s3.get("accounts/avatars/a.png").await.as_deref(),
        Some(&b"from the store"[..])
    );

    let from_disk = get(http, "/system/media_attachments/b.jpg", &[]).await;
    assert_eq!(from_disk.status, 200);
    assert_eq!(from_disk.body, b"only on the old disk");
    assert_eq!(from_disk.header("content-type"), "image/jpeg");

    // Neither the store nor the disk has key `5000`; the old server does.
    let from_old = get(http, "/system/5000", &[]).await;
    assert_eq!(from_old.status, 200);
    assert!(from_old.body == pattern_range(0..5000));
    assert_eq!(media.origin.hits_for("/bytes/5000"), 1);

    // Media are cached like anything else: a second request touches no place.
    let again = get(http, "/system/5000", &[]).await;
    assert_eq!(again.cache_status(), "HIT");
    assert_eq!(media.origin.hits_for("/bytes/5000"), 1);

    assert_eq!(
        media
            .metric("edgecache_media_step_lookups_total{outcome=\"hit\",store=\"spaces\"}")
            .await,
        1.0
    );
    assert_eq!(
        media
            .metric("edgecache_media_step_lookups_total{outcome=\"miss\",store=\"spaces\"}")
            .await,
        2.0
    );
    assert_eq!(
        media
            .metric("edgecache_media_step_lookups_total{outcome=\"hit\",store=\"old\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn paths_that_would_escape_the_directory_or_prefix_are_refused() {
    let media = media_pop(&["disk"], "/bytes/", &[], &[]).await;
    let outside = media
        .legacy_dir
        .path()
        .parent()
        .expect("parent")
        .join("secret.txt");
    std::fs::write(&outside, b"secret").expect("secret file");
    media.legacy_file("ok.txt", b"fine");
    let http = media.pop.setup.http();
    for path in [
        "/system/../secret.txt",
        "/system/%2e%2e/secret.txt",
        "/system/a/..%2f..%2fsecret.txt",
        "/system/a%5c..%5c..%5csecret.txt",
        "/system//etc/passwd",
        "/system/a/./ok.txt",
    ] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(http, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{path}: {}",
            answer.lines().next().unwrap_or("")
        );
        assert!(
            !answer.contains("secret\n") && !answer.ends_with("secret"),
            "{path}"
        );
    }
    assert_eq!(get(http, "/system/ok.txt", &[]).await.body, b"fine");
    let _ = std::fs::remove_file(outside);
}

#[tokio::test]
async fn a_failing_place_is_skipped_but_never_taken_for_absent() {
    let media = media_pop(&["old", "disk"], "/status/", &[], &[]).await;
    media.legacy_file("500", b"on the disk");
    let http = media.pop.setup.http();
    // `/status/500` answers 500: the chain logs it and moves on.
    let answer = get(http, "/system/500", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"on the disk");
    assert_eq!(
        media
            .metric("edgecache_media_step_lookups_total{outcome=\"error\",store=\"old\"}")
            .await,
        1.0
    );
    // Nothing has `503`, and `old` failed: that is an error, not a 404, and not kept.
    let failed = get(http, "/system/503", &[]).await;
    assert_eq!(failed.status, 502);
    let again = get(http, "/system/503", &[]).await;
    assert_eq!(again.status, 502);
    assert_eq!(media.origin.hits_for("/status/503"), 2);
    // `/status/404` is a clean "not here".
    let absent = get(http, "/system/404", &[]).await;
    assert_eq!(absent.status, 404);
    assert_eq!(absent.header("cache-control"), "public, max-age=60");
}

#[tokio::test]
async fn a_legacy_origin_that_keeps_failing_is_left_alone_then_probed() {
    let media = media_pop(
        &["old", "disk"],
        "/bytes/",
        &[("breaker", "{ failures: 2, cooldown: 1s }")],
        &[],
    )
    .await;
    let http = media.pop.setup.http();
    media.origin.fail_with(500);
    for n in 1..=2 {
        assert_eq!(get(http, &format!("/system/{n}"), &[]).await.status, 502);
    }
    assert_eq!(media.origin.hits(), 2);
    // The circuit is open: the old server is not asked at all.
    for n in 3..=5 {
        assert_eq!(get(http, &format!("/system/{n}"), &[]).await.status, 502);
    }
    assert_eq!(media.origin.hits(), 2);
    assert_eq!(
        media
            .metric("edgecache_media_step_lookups_total{outcome=\"shed\",store=\"old\"}")
            .await,
        3.0
    );
    assert_eq!(
        media
            .metric("edgecache_media_store_circuit_open{store=\"old\"}")
            .await,
        1.0
    );
    // After the cooldown one probe goes out; the server is back, so the circuit closes.
    media.origin.fail_with(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let probe = get(http, "/system/64", &[]).await;
    assert_eq!(probe.status, 200);
    assert!(probe.body == pattern_range(0..64));
    assert_eq!(get(http, "/system/65", &[]).await.status, 200);
    assert_eq!(media.origin.hits(), 4);
}

/// A place that recovers is used within a second, not after the whole cooldown: the first
/// probe goes out after `first_probe_after`, and the wait doubles only while probes fail.
#[tokio::test]
async fn a_legacy_origin_that_recovers_is_probed_soon_and_backed_off_while_failing() {
    let media = media_pop(
        &["old"],
        "/bytes/",
        &[("breaker", "{ failures: 2, cooldown: 30s }")],
        &[],
    )
    .await;
    let http = media.pop.setup.http();
    media.origin.fail_with(500);
    for n in 1..=3 {
        assert_eq!(get(http, &format!("/system/{n}"), &[]).await.status, 502);
    }
    assert_eq!(media.origin.hits(), 2, "open after two failures");
    // Still failing at the first probe (1 s): the next wait is 2 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(http, "/system/4", &[]).await.status, 502);
    assert_eq!(media.origin.hits(), 3, "one probe after 1 s");
    media.origin.fail_with(0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(http, "/system/5", &[]).await.status, 502);
    assert_eq!(media.origin.hits(), 3, "no probe 1 s after a failed probe");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let probe = get(http, "/system/64", &[]).await;
    assert_eq!(probe.status, 200, "probed 2 s after the failed probe");
    assert_eq!(get(http, "/system/65", &[]).await.status, 200);
    assert_eq!(media.origin.hits(), 5);
    assert_eq!(
        media
            .metric("edgecache_media_store_circuit_open{store=\"old\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_legacy_origin_gets_no_more_than_its_concurrency_limit() {
    // Key `n` under `/slow/` answers after n ms.
    let media = media_pop(&["old"], "/slow/", &[("max_concurrency", "1")], &[]).await;
    let http = media.pop.setup.http();
    let (first, second) = tokio::join!(get(http, "/system/1500", &[]), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        get(http, "/system/1501", &[]).await
    });
    assert_eq!(first.status, 200);
    assert_eq!(
        second.status, 502,
        "the second request must not queue on the slow origin"
    );
    assert_eq!(media.origin.hits(), 1);
}

#[tokio::test]
async fn wrong_store_credentials_are_an_error_not_a_miss() {
    let media = media_pop(&["spaces", "disk"], "/bytes/", &[], &[]).await;
    media.s3.put("a.png", b"x").await;
    // A second edge, whose credentials the store refuses.
    let s3 = S3Server::start().await;
    s3.put("a.png", b"x").await;
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, dir| {
        let credentials = dir.join("wrong.credentials");
        std::fs::write(
            &credentials,
            "access_key_id: edgecache-test\nsecret_access_key: not-the-secret\n",
        )
        .expect("credentials");
        config.stores.insert(
            "spaces".to_string(),
            Store::s3(&s3.endpoint(), "media", &credentials),
        );
        config.add_routes([Route {
            media: Some(MediaRoute {
                chain: vec!["spaces".to_string()],
                ..MediaRoute::default()
            }),
            ..Route::at("/system/")
        }]);
    })
    .await;
    let answer = get(pop.setup.http(), "/system/a.png", &[]).await;
    assert_eq!(answer.status, 502);
    let log = pop.edge.stderr_text() + &pop.edge.stdout_text();
    assert!(log.contains("access denied"), "{log}");
    assert!(
        !log.contains("not-the-secret"),
        "the secret must never be logged"
    );
    // The edge with the right credentials serves it.
    assert_eq!(
        get(media.pop.setup.http(), "/system/a.png", &[]).await.body,
        b"x"
    );
}

#[tokio::test]
async fn ranges_of_media_are_cut_from_the_whole_object() {
    let media = media_pop(&["spaces"], "/bytes/", &[], &[]).await;
    let video: Vec<u8> = pattern_range(0..300_000);
    media.s3.put("video.mp4", &video).await;
    let http = media.pop.setup.http();
    let answer = get(http, "/system/video.mp4", &[("Range", "bytes=1000-1999")]).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.header("content-range"), "bytes 1000-1999/300000");
    assert!(answer.body == video[1000..2000]);
    let whole = get(http, "/system/video.mp4", &[]).await;
    assert_eq!(whole.cache_status(), "HIT");
    assert!(whole.body == video);
    assert_eq!(whole.header("content-type"), "video/mp4");
}

#[tokio::test]
async fn a_store_prefix_is_put_before_every_key() {
    let media = media_pop(&["spaces"], "/bytes/", &[], &[("prefix", "cache")]).await;
    media.s3.put("cache/a.png", b"under the prefix").await;
    media.s3.put("b.png", b"outside the prefix").await;
    let http = media.pop.setup.http();
    assert_eq!(
        get(http, "/system/a.png", &[]).await.body,
        b"under the prefix"
    );
    assert_eq!(get(http, "/system/b.png", &[]).await.status, 404);
}

#[tokio::test]
async fn bodies_that_break_off_count_against_the_breaker() {
    // `/cut/<n>` sends its headers, then breaks the body off half-way: a disk that opens
    // files and then fails to read them.
    let media = media_pop(
        &["old"],
        "/cut/",
        &[("breaker", "{ failures: 2, cooldown: 30s }")],
        &[],
    )
    .await;
    let client = reqwest::Client::new();
    for n in [100_000, 100_001] {
        let url = format!("http://{}/system/{n}", media.pop.setup.http());
        let whole = match client.get(&url).send().await {
            Ok(resp) => resp.bytes().await.is_ok_and(|b| b.len() == n),
            Err(_) => false,
        };
        assert!(!whole, "a broken body must not reach the client whole");
    }
    assert_eq!(media.origin.hits(), 2);
    let third = get(media.pop.setup.http(), "/system/100002", &[]).await;
    assert_eq!(third.status, 502);
    assert_eq!(media.origin.hits(), 2, "the circuit is open");
}

#[tokio::test]
async fn a_reload_changes_media_routes_live_and_stores_only_after_a_restart() {
    let media = media_pop(&["spaces"], "/bytes/", &[], &[]).await;
    media.s3.put("swap.png", b"from the store").await;
    media.legacy_file("swap.png", b"from the disk");
    let http = media.pop.setup.http();
    assert_eq!(
        get(http, "/system/swap.png", &[]).await.body,
        b"from the store"
    );

    let mut changed = media.pop.config.clone();
    changed
        .route("/system/")
        .media
        .as_mut()
        .expect("a media route")
        .chain = vec!["disk".to_string()];
    changed.store("disk").set("timeout", "7s");
    media.pop.setup.write_config(&changed);
    let (status, report) = media
        .pop
        .edge
        .admin_reload(Some(crate::harness::ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert!(report.contains("needs restart: stores changed"), "{report}");
    // The route's chain is live: a path not cached yet comes from the disk now.
    media.legacy_file("other.png", b"disk only");
    media.s3.put("other.png", b"store copy").await;
    assert_eq!(get(http, "/system/other.png", &[]).await.body, b"disk only");
}

/// On a media route the cache key is the media key the chain serves: the decoded path,
/// without the query. So every spelling of one file is one object, and one purge of the
/// plain URL (Mastodon's cache buster sends that one) removes it for all of them.
#[tokio::test]
async fn every_spelling_of_a_media_url_is_one_object_and_one_purge() {
    let media = media_pop(&["disk"], "/bytes/", &[], &[]).await;
    media.legacy_file("a/x.png", b"the file");
    let http = media.pop.setup.http();
    let spellings = [
        "/system/a/x.png",
        "/system/a/x.png?x=1",
        "/system/a/%78.png",
        "/system//a/x.png?",
    ];
    let first = get(http, spellings[0], &[]).await;
    assert_eq!((first.status, first.cache_status()), (200, "MISS"));
    for spelling in &spellings[1..3] {
        let answer = get(http, spelling, &[]).await;
        assert_eq!(answer.status, 200, "{spelling}");
        assert_eq!(
            answer.cache_status(),
            "HIT",
            "{spelling} is an object of its own"
        );
        assert_eq!(answer.body, b"the file");
    }
    // A path the chain refuses is refused, never cached under another object's key.
    let refused = get(http, spellings[3], &[]).await;
    assert_eq!(refused.status, 400, "{spellings:?}");

    // The file is deleted, and the plain URL purged: no spelling is served from the cache.
    std::fs::remove_file(media.legacy_dir.path().join("a/x.png")).expect("delete");
    let host = http.to_string();
    let (status, _) = media.pop.purge(&format!("url={host}/system/a/x.png")).await;
    assert_eq!(status, 200);
    for spelling in &spellings[..3] {
        let answer = get(http, spelling, &[]).await;
        assert_eq!(
            answer.status, 404,
            "{spelling} still served after the purge"
        );
    }
    // Purging by another spelling reaches the same object.
    media.legacy_file("b/y.png", b"another");
    assert_eq!(
        get(http, "/system/b/y.png", &[]).await.cache_status(),
        "MISS"
    );
    // `%2579` is `%79` once the form value is decoded: the purge names `/system/b/%79.png?z=1`.
    let (status, _) = media
        .pop
        .purge(&format!("url={host}/system/b/%2579.png%3Fz%3D1"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        get(http, "/system/b/y.png", &[]).await.cache_status(),
        "MISS"
    );
}

/// A range with `If-Range` that reaches the media chain itself (a signed-in request, which
/// bypasses the cache) gets its range when the validator matches strongly, and the whole
/// object otherwise.
#[tokio::test]
async fn if_range_is_judged_by_the_chain_for_requests_the_cache_does_not_answer() {
    let media = media_pop(&["disk"], "/bytes/", &[], &[]).await;
    media.legacy_file("v/clip.mp4", &pattern_range(0..10_000));
    let http = media.pop.setup.http();
    let whole = get(http, "/system/v/clip.mp4", &[]).await;
    let etag = whole.header("etag").to_string();
    let modified = whole.header("last-modified").to_string();
    assert!(etag.starts_with('"'), "{etag:?}");
    let signed_in = ("Cookie", "_mastodon_session=abc");
    let range = ("Range", "bytes=0-9");
    for (validator, status, len) in [
        (etag.as_str(), 206, 10),
        (modified.as_str(), 206, 10),
        ("\"another\"", 200, 10_000),
        (&format!("W/{etag}"), 200, 10_000),
    ] {
        let answer = get(
            http,
            "/system/v/clip.mp4",
            &[signed_in, range, ("If-Range", validator)],
        )
        .await;
        assert_eq!(answer.cache_status(), "BYPASS");
        assert_eq!(
            (answer.status, answer.body.len()),
            (status, len),
            "{validator}"
        );
    }
}
