//! HTTP caching as RFC 9111 (and RFC 9213, RFC 9211) says, behaviour by behaviour, against
//! our own origin. The public conformance suite runs the same ground from outside the repo.

use std::time::Duration;

use crate::harness::origin::Origin;
use crate::harness::{get, pop_with_cache};

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
