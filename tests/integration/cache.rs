//! The shared cache: what is stored, what is served, and from which tier.

use std::time::Duration;

use crate::harness::origin::{pattern_range, Origin};
use crate::harness::{
    entry_files, get, kill_and_restart, pop_with_cache, pop_with_cache_config,
    restartable_pop_with_cache, Answer, Route, ADMIN_TOKEN,
};

#[tokio::test]
async fn a_public_response_is_served_from_cache_with_its_age() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/@alice?cc=public,max-age=60";
    let first = get(pop.setup.http(), path, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status(), "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = get(pop.setup.http(), path, &[]).await;
    assert_eq!(second.cache_status(), "HIT");
    assert_eq!(second.body, first.body);
    let age: u64 = second.header("age").parse().expect("Age header");
    assert!((1..60).contains(&age), "Age {age}");
    assert_eq!(origin.hits_for("/@alice"), 1);
    // The query's parameter order is not part of the object's identity.
    let reordered = get(pop.setup.http(), "/@alice?cc=public,max-age=60&", &[]).await;
    assert_eq!(reordered.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/@alice"), 1);
    // The access log says the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = pop.edge.stdout_text();
        let caches: Vec<String> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/@alice")))
            .map(|l| l["cache"].as_str().unwrap_or("").to_string())
            .collect();
        if caches == ["MISS", "HIT", "HIT"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "access log: {caches:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pop.edge
            .metric("edgecache_cache_responses_total{status=\"HIT\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn responses_that_forbid_sharing_are_not_stored() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let cases = [
        ("/a", "cc=private,no-store"),
        ("/b", "cc=private,max-age=60"),
        ("/c", "cc=no-store,max-age=60"),
        (
            "/d",
            "cc=public,max-age=60&h=Set-Cookie:_mastodon_session=x",
        ),
        ("/e", "cc=public,max-age=60&h=Vary:*"),
        ("/f", ""),
    ];
    for (path, query) in cases {
        let url = format!("{path}?{query}");
        let first = get(pop.setup.http(), &url, &[]).await;
        let second = get(pop.setup.http(), &url, &[]).await;
        assert_eq!(second.cache_status(), "MISS", "{url}");
        assert_eq!(origin.hits_for(path), 2, "{url} was answered from cache");
        assert_eq!(first.status, second.status);
    }
}

#[tokio::test]
async fn requests_that_identify_a_user_never_use_the_shared_cache() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/api/v1/timelines/public?cc=public,max-age=60";
    let users: [(&str, &str); 4] = [
        ("Authorization", "Bearer token-of-bob"),
        ("Cookie", "theme=light; _session_id=bob"),
        ("Cookie", "_mastodon_session=bob"),
        (
            "Signature",
            "keyId=\"https://remote.example/users/bob#main-key\",signature=\"x\"",
        ),
    ];
    // A user's request is neither stored ...
    for (name, value) in users {
        let answer = get(pop.setup.http(), path, &[(name, value)]).await;
        assert_eq!(answer.cache_status(), "BYPASS", "{name}");
    }
    let anonymous = get(pop.setup.http(), path, &[]).await;
    assert_eq!(anonymous.cache_status(), "MISS");
    assert!(!String::from_utf8_lossy(&anonymous.body).contains("bob"));
    // ... nor answered from what is stored.
    for (name, value) in users {
        let answer = get(pop.setup.http(), path, &[(name, value)]).await;
        assert_eq!(answer.cache_status(), "BYPASS", "{name}");
        assert!(String::from_utf8_lossy(&answer.body).contains("bob"));
    }
    assert_eq!(origin.hits_for("/api/v1/timelines/public"), 9);
    let cached = get(pop.setup.http(), path, &[("Cookie", "theme=dark")]).await;
    assert_eq!(cached.cache_status(), "HIT");
}

#[tokio::test]
async fn vary_keeps_html_and_activitypub_apart() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/@alice?cc=public,max-age=60&h=Vary:Accept";
    let html = [("Accept", "text/html")];
    let json = [("Accept", "application/activity+json")];
    assert_eq!(
        get(pop.setup.http(), path, &html).await.cache_status(),
        "MISS"
    );
    let first_json = get(pop.setup.http(), path, &json).await;
    assert_eq!(first_json.cache_status(), "MISS");
    let again_html = get(pop.setup.http(), path, &html).await;
    let again_json = get(pop.setup.http(), path, &json).await;
    assert_eq!(again_html.cache_status(), "HIT");
    assert_eq!(again_json.cache_status(), "HIT");
    let accept = |a: &Answer| crate::harness::origin::seen_headers(&a.json(), "accept");
    assert_eq!(accept(&again_html), vec!["text/html"]);
    assert_eq!(accept(&again_json), vec!["application/activity+json"]);
    assert_eq!(origin.hits_for("/@alice"), 2);
}

#[tokio::test]
async fn routes_set_a_default_lifetime_or_turn_the_cache_off() {
    let origin = Origin::start().await;
    let sites = "sites:\n  - routes:\n      - path: /system/\n        cache_ttl: 7d\n      - path: /api/v1/streaming\n        cache: false\n";
    let pop = pop_with_cache(&origin, sites).await;
    // No Cache-Control at all: kept for the route's 7 days.
    get(pop.setup.http(), "/system/media/a.png", &[]).await;
    let media = get(pop.setup.http(), "/system/media/a.png", &[]).await;
    assert_eq!(media.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/system/media/a.png"), 1);
    // The same silence outside the route is not cacheable.
    get(pop.setup.http(), "/other", &[]).await;
    assert_eq!(
        get(pop.setup.http(), "/other", &[]).await.cache_status(),
        "MISS"
    );
    // A route with the cache off is never stored, whatever the response says.
    let streaming = "/api/v1/streaming/health?cc=public,max-age=60";
    get(pop.setup.http(), streaming, &[]).await;
    let again = get(pop.setup.http(), streaming, &[]).await;
    assert_eq!(again.cache_status(), "BYPASS");
    assert_eq!(origin.hits_for("/api/v1/streaming/health"), 2);
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_fetch_and_all_get_the_body() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let size = 1024 * 1024u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&chunk=65536&delay_ms=20");
    let expected = pattern_range(0..size);
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let address = pop.setup.http();
        let path = path.clone();
        tasks.push(tokio::spawn(async move { get(address, &path, &[]).await }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for task in tasks {
        let answer = task.await.expect("request task");
        assert_eq!(answer.status, 200);
        assert!(answer.body == expected, "a client got a different body");
        *statuses
            .entry(answer.cache_status().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        origin.hits_for(&format!("/bytes/{size}")),
        1,
        "statuses: {statuses:?}"
    );
    let waits = pop
        .edge
        .metric("edgecache_cache_lock_waits_total")
        .await
        .unwrap_or(0.0);
    assert!(waits > 0.0, "no request waited on the lock: {statuses:?}");
}

#[tokio::test]
async fn stale_objects_are_served_while_the_core_fails() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        config.cache().serve_stale_on_error = Some("1h".to_string());
    })
    .await;
    let path = "/about?cc=public,max-age=1";
    let fresh = get(pop.setup.http(), path, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.fail_with(503);
    let stale = get(pop.setup.http(), path, &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.cache_status(), "STALE");
    assert_eq!(stale.body, fresh.body);
    // A core that is gone entirely: the same.
    let address = origin.address;
    drop(origin);
    let stale = get(pop.setup.http(), path, &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.cache_status(), "STALE");
    // Back again: the object is fetched afresh, once the host that refused connections
    // has passed a health check and is back in rotation.
    let origin = Origin::start_at(address).await;
    pop.edge.wait_ready_status(200).await;
    let ejected = format!("edgecache_core_host_ejected{{group=\"web\",host=\"{address}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pop.edge.metric(&ejected).await.is_some_and(|v| v != 0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the host stayed ejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = get(pop.setup.http(), path, &[]).await;
    assert_eq!(
        fresh.cache_status(),
        "EXPIRED",
        "origin hits {}",
        origin.hits()
    );
    assert_eq!(origin.hits(), 1);
    // must-revalidate forbids it.
    let strict = "/strict?cc=public,max-age=1,must-revalidate";
    get(pop.setup.http(), strict, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.fail_with(503);
    assert_eq!(get(pop.setup.http(), strict, &[]).await.status, 503);
}

#[tokio::test]
async fn an_expired_object_is_revalidated_with_its_validator() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/about/more?cc=public,max-age=1&etag=v1";
    let first = get(pop.setup.http(), path, &[]).await;
    assert_eq!(first.cache_status(), "MISS");
    assert_eq!(first.header("etag"), "\"v1\"");
    // A client's own validator is answered from the cache.
    let not_modified = get(pop.setup.http(), path, &[("If-None-Match", "\"v1\"")]).await;
    assert_eq!(
        (not_modified.status, not_modified.cache_status()),
        (304, "HIT")
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The origin only answers 304 to a matching If-None-Match: REVALIDATED proves the edge
    // sent the stored ETag and kept its body.
    let revalidated = get(pop.setup.http(), path, &[]).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.cache_status(), "REVALIDATED");
    assert_eq!(revalidated.body, first.body);
    assert_eq!(origin.hits_for("/about/more"), 2);
    let hit = get(pop.setup.http(), path, &[]).await;
    assert_eq!(hit.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/about/more"), 2);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/slow/300?cc=public,max-age=1,stale-while-revalidate=60";
    assert_eq!(
        get(pop.setup.http(), path, &[]).await.cache_status(),
        "MISS"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let address = pop.setup.http();
        tasks.push(tokio::spawn(async move { get(address, path, &[]).await }));
    }
    for task in tasks {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache_status(), "STALE");
    }
    // One background refresh, then fresh hits.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = get(pop.setup.http(), path, &[]).await;
        if answer.cache_status() == "HIT" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(origin.hits_for("/slow/300"), 2);
}

#[tokio::test]
async fn the_status_header_and_routes_reload_live() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/system/x.png";
    get(pop.setup.http(), path, &[]).await;
    assert_eq!(
        get(pop.setup.http(), path, &[]).await.cache_status(),
        "MISS"
    );
    let mut changed = pop.config.clone();
    changed.cache().status_header = Some(false);
    changed.add_routes([Route {
        cache_ttl: Some("7d".to_string()),
        ..Route::at("/system/")
    }]);
    pop.setup.write_config(&changed);
    let (status, body) = pop.edge.admin_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("needs restart"), "{body}");
    get(pop.setup.http(), path, &[]).await;
    let answer = get(pop.setup.http(), path, &[]).await;
    assert!(answer.headers.get("x-cache-status").is_none());
    assert_eq!(origin.hits_for(path), 3);
}

#[tokio::test]
async fn waiters_on_a_fetch_that_breaks_off_end_with_an_error_not_a_hang() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/2000000?cc=public,max-age=600&delay_ms=20&abort_at=600000";
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = format!("http://{}{path}", pop.setup.http());
        tasks.push(tokio::spawn(async move {
            let resp = reqwest::get(url).await?;
            resp.bytes().await
        }));
    }
    for task in tasks {
        let outcome = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("a waiter hung")
            .expect("task");
        assert!(outcome.is_err(), "a broken body arrived as if complete");
    }
    assert!(entry_files(&pop, "body").is_empty());
    // Nothing is stuck: the next request fetches again.
    let fresh = get(pop.setup.http(), "/bytes/1000?cc=public,max-age=600", &[]).await;
    assert_eq!(fresh.cache_status(), "MISS");
}

#[tokio::test]
async fn refreshing_one_variant_keeps_the_others() {
    let origin = Origin::start().await;
    let mut pop = restartable_pop_with_cache(&origin).await;
    let path = "/@carol?cc=public,max-age=2&h=Vary:Accept";
    let html = [("Accept", "text/html")];
    let json = [("Accept", "application/activity+json")];
    assert_eq!(
        get(pop.setup.http(), path, &html).await.cache_status(),
        "MISS"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        get(pop.setup.http(), path, &json).await.cache_status(),
        "MISS"
    );
    // The HTML copy expires first and is fetched again; the JSON one is still fresh.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(pop.setup.http(), path, &html).await.cache_status(),
        "EXPIRED"
    );
    assert_eq!(
        get(pop.setup.http(), path, &json).await.cache_status(),
        "HIT"
    );
    // Also once both come from disk.
    kill_and_restart(&mut pop).await;
    assert_eq!(
        get(pop.setup.http(), path, &json).await.cache_status(),
        "HIT"
    );
    assert_eq!(
        get(pop.setup.http(), path, &html).await.cache_status(),
        "HIT"
    );
    assert_eq!(origin.hits_for("/@carol"), 3);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_scheme_is_part_of_the_key() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "proxy:\n  trusted_proxies: [\"127.0.0.1\"]\n").await;
    let path = "/redirecting?cc=public,max-age=600";
    let https = get(pop.setup.http(), path, &[("X-Forwarded-Proto", "https")]).await;
    let http = get(pop.setup.http(), path, &[("X-Forwarded-Proto", "http")]).await;
    assert_eq!(https.cache_status(), "MISS");
    assert_eq!(http.cache_status(), "MISS");
    let again = get(pop.setup.http(), path, &[("X-Forwarded-Proto", "https")]).await;
    assert_eq!(again.cache_status(), "HIT");
    assert_eq!(
        crate::harness::origin::seen_headers(&again.json(), "x-forwarded-proto"),
        vec!["https"]
    );
    // A forwarded host is not in the key: not cached.
    let other = get(
        pop.setup.http(),
        path,
        &[("X-Forwarded-Host", "other.example")],
    )
    .await;
    assert_eq!(other.cache_status(), "BYPASS");
    assert_eq!(origin.hits_for("/redirecting"), 3);
}

#[tokio::test]
async fn waiters_on_a_core_that_is_down_get_an_error_quickly() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    drop(origin);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let address = pop.setup.http();
        tasks.push(tokio::spawn(async move {
            get(address, "/never-cached?cc=public,max-age=60", &[]).await
        }));
    }
    for task in tasks {
        let answer = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("a waiter hung")
            .expect("task");
        // 502 for a refused connect, 503 once the refusing host has been ejected.
        assert!(matches!(answer.status, 502 | 503), "{}", answer.status);
    }
}
