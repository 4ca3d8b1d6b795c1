//! HTTP caching as RFC 9111 (and RFC 9213, RFC 9211) says, behaviour by behaviour, against
//! our own origin. The public conformance suite runs the same ground from outside the repo.

use std::time::Duration;

use crate::harness::origin::Origin;
use crate::harness::scripted::ScriptedCore;
use crate::harness::{get, pop_with_cache, pop_with_cache_config, raw_exchange, send, Route};

#[tokio::test]
async fn an_upstream_age_is_passed_on_and_uses_up_the_lifetime() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();

    // Older than its max-age when it arrives: passed on as it came, and stale at once.
    let old = "/old?cc=max-age=3600&h=Age:7200";
    let first = get(http, old, &[]).await;
    assert_eq!((first.status, first.header("age")), (200, "7200"));
    let second = get(http, old, &[]).await;
    assert_ne!(second.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/old"), 2);

    // Younger: fresh, and every hit counts from the upstream's Age on.
    let young = "/young?cc=max-age=3600&h=Age:1800";
    assert_eq!(get(http, young, &[]).await.header("age"), "1800");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = get(http, young, &[]).await;
    assert_eq!(hit.cache_status(), "HIT");
    let age: u64 = hit.header("age").parse().expect("Age");
    assert!((1801..1900).contains(&age), "Age {age}");
    assert_eq!(origin.hits_for("/young"), 1);

    // Only the first line's first member counts; what is not delta-seconds is ignored.
    for (path, stale) in [
        ("/list-old?cc=max-age=3600&h=Age:7200,%200", true),
        ("/list-young?cc=max-age=3600&h=Age:0,%207200", false),
        ("/lines-old?cc=max-age=3600&h=Age:7200&h=Age:0", true),
        ("/lines-young?cc=max-age=3600&h=Age:0&h=Age:7200", false),
        ("/words?cc=max-age=3600&h=Age:old", false),
        ("/negative?cc=max-age=3600&h=Age:-7200", false),
        ("/fraction?cc=max-age=3600&h=Age:7200.0", false),
        ("/huge?cc=max-age=3600&h=Age:99999999999999999999", true),
    ] {
        get(http, path, &[]).await;
        let again = get(http, path, &[]).await;
        assert_eq!(again.cache_status() != "HIT", stale, "{path}");
    }
}

#[tokio::test]
async fn any_final_status_with_explicit_freshness_is_stored_and_never_reused_stale() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    for status in [299, 303, 400, 499, 500, 502, 503, 504, 599] {
        let path = format!("/status/{status}?cc=max-age=60");
        let first = get(http, &path, &[]).await;
        let second = get(http, &path, &[]).await;
        assert_eq!((first.status, second.status), (status, status));
        assert_eq!(second.cache_status(), "HIT", "{status}");
        assert_eq!(origin.hits_for(&format!("/status/{status}")), 1, "{status}");
    }
    // Stale, an error is asked for again, even though the core still answers with errors:
    // the PoP's stale-on-error window keeps good objects, not errors.
    let path = "/status/500?cc=max-age=1&stale";
    get(http, path, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = get(http, path, &[]).await;
    assert_eq!(again.status, 500);
    assert_ne!(again.cache_status(), "HIT");
    assert_ne!(again.cache_status(), "STALE");
    // Without freshness of its own, an error is not kept, and 206 and 304 never are.
    for path in [
        "/status/500?plain",
        "/status/503?plain",
        "/status/206?cc=max-age=60",
    ] {
        get(http, path, &[]).await;
        assert_eq!(get(http, path, &[]).await.cache_status(), "MISS", "{path}");
    }
}

#[tokio::test]
async fn a_response_with_last_modified_is_fresh_for_a_share_of_its_age_unless_the_route_refuses() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        config.add_routes([Route {
            heuristic_freshness: Some(false),
            ..Route::at("/api/")
        }]);
    })
    .await;
    let http = pop.setup.http();
    let modified =
        httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(10 * 24 * 3600));
    let path = format!(
        "/heuristic?h=Last-Modified:{}",
        modified.replace(' ', "%20")
    );
    get(http, &path, &[]).await;
    let hit = get(http, &path, &[]).await;
    assert_eq!(hit.cache_status(), "HIT");
    assert_eq!(origin.hits_for("/heuristic"), 1);
    // A status that is not cacheable by default needs `public` for a guess.
    let path = format!(
        "/status/599?h=Last-Modified:{}",
        modified.replace(' ', "%20")
    );
    get(http, &path, &[]).await;
    assert_eq!(get(http, &path, &[]).await.cache_status(), "MISS");
    let public = format!("{path}&cc=public");
    get(http, &public, &[]).await;
    assert_eq!(get(http, &public, &[]).await.cache_status(), "HIT");
    // A route that refuses guesses keeps nothing without stated freshness.
    let refused = format!(
        "/api/v1/instance?h=Last-Modified:{}",
        modified.replace(' ', "%20")
    );
    get(http, &refused, &[]).await;
    assert_eq!(get(http, &refused, &[]).await.cache_status(), "MISS");
    assert_eq!(origin.hits_for("/api/v1/instance"), 2);
}

#[tokio::test]
async fn targeted_fields_speak_to_the_pop_and_ours_never_reaches_a_client() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let kept = |path: &'static str| async move {
        get(http, path, &[]).await;
        get(http, path, &[]).await.cache_status() == "HIT"
    };
    // CDN-Cache-Control over Cache-Control, both ways.
    assert!(kept("/a?cc=no-store&h=CDN-Cache-Control:max-age=600").await);
    assert!(!kept("/b?cc=max-age=600&h=CDN-Cache-Control:no-store").await);
    assert!(!kept("/c?cc=max-age=600&h=CDN-Cache-Control:private").await);
    // Empty, or not a valid dictionary: ignored, Cache-Control applies.
    let empty = "/empty?cc=private&h=CDN-Cache-Control:\
                 &h=Last-Modified:Mon,%2001%20Jan%202024%2000:00:00%20GMT";
    assert!(!kept(empty).await);
    assert!(!kept("/d?cc=no-store&h=CDN-Cache-Control:max-age=%2210000%22").await);
    assert!(kept("/e?cc=max-age=600&h=CDN-Cache-Control:max-age%20=1").await);

    // Ours comes first and is for PoPs alone; browsers still get Cache-Control as sent.
    let path =
        "/f?cc=max-age=10&h=CDN-Cache-Control:max-age=20&h=Edgecache-Cache-Control:max-age=86400";
    let first = get(http, path, &[]).await;
    assert_eq!(first.header("edgecache-cache-control"), "");
    assert_eq!(first.header("cache-control"), "max-age=10");
    assert_eq!(first.header("cdn-cache-control"), "max-age=20");
    let hit = get(http, path, &[]).await;
    assert_eq!(hit.cache_status(), "HIT");
    assert_eq!(hit.header("edgecache-cache-control"), "");
    // Uncached responses lose it too.
    let passed = get(
        http,
        "/g?cc=no-store&h=Edgecache-Cache-Control:no-store",
        &[],
    )
    .await;
    assert_eq!(passed.header("edgecache-cache-control"), "");
    assert_eq!(passed.header("cache-control"), "no-store");
}

#[tokio::test]
async fn a_304_freshens_the_stored_headers_but_not_its_framing() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = "/validated?cc=max-age=1&etag=v1&hit_header=Test-Header&hit_header=Content-Foo";
    let first = get(http, path, &[]).await;
    assert_eq!(
        (first.header("test-header"), first.header("content-foo")),
        ("1", "1")
    );
    let length = first.header("content-length").to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale: revalidated with the ETag, and the 304's fields replace the stored ones.
    let revalidated = get(http, path, &[]).await;
    assert_eq!(revalidated.cache_status(), "REVALIDATED");
    assert_eq!(revalidated.header("test-header"), "2");
    assert_eq!(revalidated.header("content-foo"), "2");
    assert_eq!(revalidated.header("content-length"), length);
    assert_eq!(revalidated.body, first.body);
    // And the stored copy has them now.
    let hit = get(http, path, &[]).await;
    assert_eq!(hit.cache_status(), "HIT");
    assert_eq!(hit.header("test-header"), "2");
    assert_eq!(origin.hits_for("/validated"), 2);

    // What the PoP hides from clients stays hidden after a 304 brought it again.
    let hidden = "/hidden?cc=max-age=1&etag=v1&h=X-Runtime:0.1";
    assert_eq!(get(http, hidden, &[]).await.header("x-runtime"), "");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(http, hidden, &[]).await.header("x-runtime"), "");
    assert_eq!(get(http, hidden, &[]).await.header("x-runtime"), "");
}

#[tokio::test]
async fn a_head_on_a_stale_response_goes_on_as_head_and_a_matching_200_freshens_it() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let head = || reqwest::Method::HEAD;

    // The HEAD's answer has the stored length and no other validator: the stored response
    // takes its fields and its lifetime, and keeps its body.
    let same = "/bytes/3000?cc=max-age=1&hit_header=Test-Header";
    let first = get(http, same, &[]).await;
    assert_eq!(first.body.len(), 3000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answered = send(head(), http, same, &[]).await;
    assert_eq!(answered.status, 200);
    assert_eq!(answered.header("test-header"), "2");
    assert_eq!(answered.header("content-length"), "3000");
    assert!(answered.body.is_empty());
    assert_eq!(answered.cache_status(), "EXPIRED");
    assert!(
        own_entry(&answered).contains("fwd=stale"),
        "{}",
        own_entry(&answered)
    );
    let hit = get(http, same, &[]).await;
    assert_eq!(hit.cache_status(), "HIT");
    assert_eq!(hit.header("test-header"), "2");
    assert_eq!(hit.body, first.body);
    assert_eq!(origin.methods_for("/bytes/3000"), ["GET", "HEAD"]);

    // A validator changed: the HEAD's answer is passed on as it came, the stored response
    // is left stale, and the next GET fetches the new body.
    let changed = "/bytes/2000?cc=max-age=1&hit_header=ETag";
    assert_eq!(get(http, changed, &[]).await.header("etag"), "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answered = send(head(), http, changed, &[]).await;
    assert_eq!((answered.status, answered.header("etag")), (200, "2"));
    assert!(answered.body.is_empty());
    let refetched = get(http, changed, &[]).await;
    assert_ne!(refetched.cache_status(), "HIT");
    assert_eq!(refetched.header("etag"), "3");
    assert_eq!(refetched.body.len(), 2000);
    assert_eq!(origin.methods_for("/bytes/2000"), ["GET", "HEAD", "GET"]);
    assert_eq!(get(http, changed, &[]).await.body.len(), 2000);

    // With a validator stored, the HEAD is conditional and a 304 freshens as for a GET.
    let validated = "/bytes/1200?cc=max-age=1&etag=v1&hit_header=Test-Header";
    get(http, validated, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answered = send(head(), http, validated, &[]).await;
    assert_eq!(
        (answered.status, answered.header("test-header")),
        (200, "2")
    );
    assert_eq!(answered.cache_status(), "REVALIDATED");
    let hit = get(http, validated, &[]).await;
    assert_eq!((hit.cache_status(), hit.body.len()), ("HIT", 1200));
    assert_eq!(hit.header("test-header"), "2");
    assert_eq!(origin.methods_for("/bytes/1200"), ["GET", "HEAD"]);

    // A HEAD whose answer forbids storing removes the stored response: it may no longer
    // stand in for anything.
    let forbidden = "/bytes/900?cc=max-age=1&head_h=Cache-Control:no-store";
    get(http, forbidden, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(head(), http, forbidden, &[]).await.status, 200);
    let after = get(http, forbidden, &[]).await;
    assert_eq!((after.cache_status(), after.body.len()), ("MISS", 900));
    assert_eq!(origin.methods_for("/bytes/900"), ["GET", "HEAD", "GET"]);

    // A HEAD that freshens one variant of a `Vary` response leaves the others stored: the
    // first variant's refresh is no new object.
    let varied = "/bytes/1500?cc=max-age=1&h=Vary:Accept";
    get(http, varied, &[("accept", "text/a")]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get(http, varied, &[("accept", "text/b")]).await;
    let answered = send(head(), http, varied, &[("accept", "text/a")]).await;
    assert_eq!(answered.cache_status(), "EXPIRED");
    let other = get(http, varied, &[("accept", "text/b")]).await;
    assert_eq!((other.cache_status(), other.body.len()), ("HIT", 1500));
    let refreshed = get(http, varied, &[("accept", "text/a")]).await;
    assert_eq!(
        (refreshed.cache_status(), refreshed.body.len()),
        ("HIT", 1500)
    );
    assert_eq!(origin.methods_for("/bytes/1500"), ["GET", "GET", "HEAD"]);

    // Nothing stored: a HEAD still fills the cache with a GET.
    let cold = "/bytes/1000?cc=max-age=60";
    let answered = send(head(), http, cold, &[]).await;
    assert_eq!(answered.header("content-length"), "1000");
    assert!(answered.body.is_empty());
    let hit = get(http, cold, &[]).await;
    assert_eq!((hit.cache_status(), hit.body.len()), ("HIT", 1000));
    assert_eq!(origin.methods_for("/bytes/1000"), ["GET"]);
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_its_url_and_the_ones_it_names() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let client = reqwest::Client::new();
    let send = |method: &str, path: &str| {
        let request = client.request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("http://{http}{path}"),
        );
        async move { request.send().await.expect("request").status().as_u16() }
    };
    let cached = |path: &'static str| async move {
        get(http, path, &[]).await;
        assert_eq!(get(http, path, &[]).await.cache_status(), "HIT", "{path}");
    };
    for method in ["POST", "PUT", "DELETE", "M-SEARCH"] {
        cached("/notes/1?cc=max-age=600").await;
        assert_eq!(send(method, "/notes/1?cc=max-age=600").await, 200);
        let after = get(http, "/notes/1?cc=max-age=600", &[]).await;
        assert_eq!(after.cache_status(), "MISS", "after {method}");
    }
    // Location and Content-Location on the same host go too; another host's do not.
    cached("/a?cc=max-age=600").await;
    cached("/b?cc=max-age=600").await;
    cached("/c?cc=max-age=600").await;
    let named = format!(
        "/notes?h=Location:/a%3Fcc=max-age=600&h=Content-Location:http://{http}/b%3Fcc=max-age=600\
         &h=Link:/c"
    );
    assert_eq!(send("POST", &named).await, 200);
    assert_eq!(
        get(http, "/a?cc=max-age=600", &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(
        get(http, "/b?cc=max-age=600", &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(
        get(http, "/c?cc=max-age=600", &[]).await.cache_status(),
        "HIT"
    );
    cached("/d?cc=max-age=600").await;
    let elsewhere = "/notes?h=Location:http://elsewhere.example/d%3Fcc=max-age=600";
    assert_eq!(send("POST", elsewhere).await, 200);
    assert_eq!(
        get(http, "/d?cc=max-age=600", &[]).await.cache_status(),
        "HIT"
    );
    // A failed unsafe request changes nothing.
    cached("/status/200?cc=max-age=600").await;
    let failed = "/status/500?x";
    assert_eq!(send("POST", failed).await, 500);
    assert_eq!(
        get(http, "/status/200?cc=max-age=600", &[])
            .await
            .cache_status(),
        "HIT"
    );
}

#[tokio::test]
async fn expires_is_read_in_all_three_date_formats_and_any_case() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    for (i, (expires, kept)) in [
        ("Thu Aug 18 02:01:18 2050", true),
        ("Thursday, 18-Aug-50 02:01:18 GMT", true),
        ("THU, 18 AUG 2050 02:01:18 gMT", true),
        ("Thu, 18 Aug 2050 02:01:18 UTC", false),
        ("Thu, 18 Aug 2050 2:01:18 GMT", false),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/expires/{i}?h=Expires:{}", expires.replace(' ', "%20"));
        get(http, &path, &[]).await;
        let again = get(http, &path, &[]).await;
        assert_eq!(again.cache_status() == "HIT", kept, "{expires}");
    }
}

#[tokio::test]
async fn requests_the_core_cannot_tell_apart_share_a_variant() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = "/about?cc=max-age=600&h=Vary:Accept-Language,%20Accept-Encoding,%20Foo";
    let with = |lang: &'static str, encoding: &'static str, foo: &'static str| async move {
        let headers = [
            ("Accept-Language", lang),
            ("Accept-Encoding", encoding),
            ("Foo", foo),
        ];
        get(http, path, &headers).await.cache_status().to_string()
    };
    assert_eq!(with("en, de", "gzip,br", "1,2").await, "MISS");
    assert_eq!(with("eN, De", "gzip,br", "1,2").await, "HIT");
    assert_eq!(with(" en ,   de", " gzip, br ", "1,2").await, "HIT");
    // The order of languages is a preference; a field outside the Accept family is kept
    // as sent, whitespace and all.
    assert_eq!(with("de, en", "gzip,br", "1,2").await, "MISS");
    assert_eq!(with("en, de", "gzip,br", "1, 2").await, "MISS");
    assert_eq!(origin.hits_for("/about"), 3);
}

#[tokio::test]
async fn a_fresh_response_without_last_modified_answers_if_modified_since_by_its_date() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    let path = "/dated?cc=max-age=600";
    let first = get(http, path, &[]).await;
    assert_eq!(first.header("last-modified"), "");
    let dated = first.header("date").to_string();
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let earlier = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3000));
    assert_eq!(
        get(http, path, &[("If-Modified-Since", &dated)])
            .await
            .status,
        304
    );
    assert_eq!(
        get(http, path, &[("If-Modified-Since", &later)])
            .await
            .status,
        304
    );
    assert_eq!(
        get(http, path, &[("If-Modified-Since", &earlier)])
            .await
            .status,
        200
    );
    assert_eq!(origin.hits_for("/dated"), 1);
}

/// The PoP's own `Cache-Status` entry: the last one.
fn own_entry(answer: &crate::harness::Answer) -> String {
    let lines: Vec<&str> = answer
        .headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let joined = lines.join(", ");
    joined.rsplit(", ").next().unwrap_or("").to_string()
}

/// `entry` without its `ttl=` (which moves with the clock), and the ttl.
fn without_ttl(entry: &str) -> (String, Option<i64>) {
    let mut ttl = None;
    let kept: Vec<&str> = entry
        .split("; ")
        .filter(|part| match part.strip_prefix("ttl=") {
            Some(value) => {
                ttl = value.parse().ok();
                false
            }
            None => true,
        })
        .collect();
    (kept.join("; "), ttl)
}

#[tokio::test]
async fn every_response_says_how_this_pop_handled_it_in_cache_status() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        config
            .cache()
            .more
            .insert("status_name".into(), "fra".into());
    })
    .await;
    let http = pop.setup.http();

    let path = "/page?cc=max-age=600";
    let miss = get(http, path, &[]).await;
    let (entry, ttl) = without_ttl(&own_entry(&miss));
    assert_eq!(entry, "fra; fwd=uri-miss; fwd-status=200; stored");
    assert!(ttl.is_some_and(|t| (590..=600).contains(&t)), "{ttl:?}");
    assert_eq!(miss.cache_status(), "MISS");
    let (entry, ttl) = without_ttl(&own_entry(&get(http, path, &[]).await));
    assert_eq!(entry, "fra; hit");
    assert!(ttl.is_some_and(|t| (590..=600).contains(&t)), "{ttl:?}");

    // Not kept: forwarded, with no lifetime here. A user's request: bypassed.
    let kept_not = get(http, "/private?cc=no-store", &[]).await;
    assert_eq!(own_entry(&kept_not), "fra; fwd=uri-miss; fwd-status=200");
    let user = get(http, path, &[("Authorization", "Bearer t")]).await;
    assert_eq!(own_entry(&user), "fra; fwd=bypass; fwd-status=200");

    // Another variant of a stored URL.
    let varied = "/lang?cc=max-age=600&h=Vary:Accept-Language";
    get(http, varied, &[("Accept-Language", "en")]).await;
    let other = get(http, varied, &[("Accept-Language", "de")]).await;
    let (entry, _) = without_ttl(&own_entry(&other));
    assert_eq!(entry, "fra; fwd=vary-miss; fwd-status=200; stored");

    // Stale, revalidated with a 304.
    let validated = "/validated?cc=max-age=1&etag=v1";
    get(http, validated, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (entry, _) = without_ttl(&own_entry(&get(http, validated, &[]).await));
    assert_eq!(entry, "fra; fwd=stale; fwd-status=304");

    // An entry from further upstream stays, before ours; the key is not shown by default.
    let upstream = get(
        http,
        "/relayed?cc=max-age=600&h=Cache-Status:core%3B%20hit",
        &[],
    )
    .await;
    let all: Vec<&str> = upstream
        .headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(all.first().copied(), Some("core; hit"), "{all:?}");
    assert!(
        all.last()
            .is_some_and(|e| e.starts_with("fra; fwd=uri-miss")),
        "{all:?}"
    );
    assert!(!own_entry(&upstream).contains("key="));
}

#[tokio::test]
async fn the_cache_status_key_is_shown_only_when_configured() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        config.cache().more.insert("status_key".into(), true.into());
    })
    .await;
    let http = pop.setup.http();
    let answer = get(http, "/keyed?b=2&a=1&cc=max-age=60", &[]).await;
    let entry = own_entry(&answer);
    assert!(
        entry.starts_with("edgecache; fwd=uri-miss")
            && entry.ends_with(&format!(
                "key=\"http://{http}/keyed?a=1&b=2&cc=max-age=60\""
            )),
        "{entry}"
    );
}

#[tokio::test]
async fn cache_status_tells_collapsed_requests_and_stale_answers_apart() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let http = pop.setup.http();
    // Requests that wait for one fetch: the leader stored it, the others were collapsed.
    let path = "/slow/300?cc=max-age=600";
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(http, path, &[]).await }))
        .collect();
    let mut entries = Vec::new();
    for task in tasks {
        entries.push(without_ttl(&own_entry(&task.await.expect("request"))).0);
    }
    assert_eq!(origin.hits_for("/slow/300"), 1);
    let stored = entries.iter().filter(|e| e.ends_with("; stored")).count();
    let collapsed = entries
        .iter()
        .filter(|e| e.ends_with("; collapsed"))
        .count();
    assert_eq!((stored, collapsed), (1, 7), "{entries:?}");

    // Served stale because the core fails: forwarded, with the core's status and a
    // negative ttl.
    let stale = "/stale?cc=max-age=1";
    get(http, stale, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.fail_with(503);
    let answer = get(http, stale, &[]).await;
    assert_eq!(answer.cache_status(), "STALE");
    let (entry, ttl) = without_ttl(&own_entry(&answer));
    assert_eq!(entry, "edgecache; fwd=stale; fwd-status=503");
    assert!(ttl.is_some_and(|t| t < 0), "{ttl:?}");
}

/// An answer of a `103 Early Hints` and a cacheable `200` in one write, so the edge reads
/// both at once.
const EARLY_HINTS_THEN_OK: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\
                                    X-Interim: 1\r\n\r\n\
                                    HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
                                    Cache-Control: max-age=600\r\n\r\nok";

#[tokio::test]
async fn an_interim_response_reaches_the_client_and_is_never_stored() {
    let origin = Origin::start().await;
    let early = ScriptedCore::start(EARLY_HINTS_THEN_OK, false).await;
    let pop = pop_with_cache_config(&origin, |config, _| {
        for group in config.core.groups.values_mut() {
            group.hosts = vec![early.address.to_string()];
        }
    })
    .await;
    let request = b"GET /early HTTP/1.1\r\nHost: social.example\r\nConnection: close\r\n\r\n";
    let first = raw_exchange(pop.setup.http(), request).await;
    let interim = first.find("HTTP/1.1 103").expect(&first);
    let fin = first.find("HTTP/1.1 200").expect(&first);
    assert!(interim < fin, "{first}");
    assert_eq!(first.matches("HTTP/1.1 103").count(), 1, "{first}");
    // The stored answer is the final one alone.
    let second = raw_exchange(pop.setup.http(), request).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("x-cache-status: HIT"), "{second}");
    assert!(
        !second.to_ascii_lowercase().contains("x-interim"),
        "{second}"
    );
}
