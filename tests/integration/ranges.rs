//! Range requests (video seeking) against cached, arriving and missing objects.

use std::time::Duration;

use crate::harness::origin::{pattern_range, Origin};
use crate::harness::{get, pop_with_cache, Cache, Memory};

#[tokio::test]
async fn ranges_of_a_cached_object_come_from_either_tier() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    // 100 KB lives in memory, 2 MB on disk only (the memory tier takes up to 256 KiB).
    for size in [100_000u64, 2_000_000] {
        let path = format!("/bytes/{size}?cc=public,max-age=600");
        get(pop.setup.http(), &path, &[]).await;
        for (range, start, end) in [
            ("bytes=0-0", 0, 1),
            ("bytes=100-199", 100, 200),
            ("bytes=262000-262999", 262_000, 263_000),
            ("bytes=-500", size - 500, size),
            ("bytes=99990-", 99_990, size),
        ] {
            if start >= size {
                continue;
            }
            let answer = get(pop.setup.http(), &path, &[("Range", range)]).await;
            assert_eq!(answer.status, 206, "{size} {range}");
            assert_eq!(answer.cache_status(), "HIT");
            assert_eq!(
                answer.header("content-range"),
                format!("bytes {start}-{}/{size}", end - 1)
            );
            assert!(answer.body == pattern_range(start..end), "{size} {range}");
        }
        let unsatisfiable = get(pop.setup.http(), &path, &[("Range", "bytes=9000000-")]).await;
        assert_eq!(unsatisfiable.status, 416);
        assert_eq!(
            unsatisfiable.header("content-range"),
            format!("bytes */{size}")
        );
        let multi = get(pop.setup.http(), &path, &[("Range", "bytes=0-9,1000-1009")]).await;
        assert_eq!(multi.status, 206);
        assert!(multi
            .header("content-type")
            .starts_with("multipart/byteranges"));
        let text = multi.body.clone();
        let contains = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&pattern_range(0..10)));
        assert!(contains(&pattern_range(1000..1010)));
        assert!(contains(
            format!("Content-Range: bytes 1000-1009/{size}").as_bytes()
        ));
        // If-Range with a validator that does not match: the whole object.
        let whole = get(
            pop.setup.http(),
            &path,
            &[("Range", "bytes=0-9"), ("If-Range", "\"other\"")],
        )
        .await;
        assert_eq!(whole.status, 200);
        assert_eq!(whole.body.len() as u64, size);
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_cold_range_request_fetches_the_object_once_and_answers_its_range() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let size = 3_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&delay_ms=10");
    let answer = get(
        pop.setup.http(),
        &path,
        &[("Range", "bytes=2000000-2000099")],
    )
    .await;
    assert_eq!(answer.status, 206);
    assert!(answer.body == pattern_range(2_000_000..2_000_100));
    // The whole object was fetched (without the Range) and kept.
    let seen = origin.hits_for(&format!("/bytes/{size}"));
    assert_eq!(seen, 1);
    let whole = get(pop.setup.http(), &path, &[]).await;
    assert_eq!(whole.cache_status(), "HIT");
    assert!(whole.body == pattern_range(0..size));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn a_range_request_joining_a_fill_gets_its_bytes_as_they_arrive() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let size = 2_000_000u64;
    // About 1.5 s for the whole body.
    let path = format!("/bytes/{size}?cc=public,max-age=600&chunk=65536&delay_ms=50");
    let address = pop.setup.http();
    let leader = {
        let path = path.clone();
        tokio::spawn(async move { get(address, &path, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let early = get(pop.setup.http(), &path, &[("Range", "bytes=10-19")]).await;
    assert_eq!(early.status, 206);
    assert!(early.body == pattern_range(10..20));
    let late = get(pop.setup.http(), &path, &[("Range", "bytes=1999000-")]).await;
    assert_eq!(late.status, 206);
    assert_eq!(
        late.header("content-range"),
        format!("bytes 1999000-1999999/{size}")
    );
    assert!(late.body == pattern_range(1_999_000..size));
    let leader = leader.await.expect("leader");
    assert!(leader.body == pattern_range(0..size));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn ranges_of_an_object_too_large_to_cache_go_to_the_core() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cache = Cache::default().disk(&dir.path().join("cache"), "64MiB");
    cache.memory = Some(Memory {
        max_size: None,
        max_object_size: Some("64KiB".to_string()),
    });
    cache.disk_tier().max_object_size = Some("2MiB".to_string());
    let pop = crate::harness::pop_with_cache_section(&origin, dir, cache).await;
    let size = 3_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    // The first request learns the size from the core's answer; the client still gets its
    // range, and nothing is stored.
    let first = get(pop.setup.http(), &path, &[("Range", "bytes=100-199")]).await;
    assert_eq!(first.status, 206);
    assert_eq!(
        first.header("content-range"),
        format!("bytes 100-199/{size}")
    );
    assert!(first.body == pattern_range(100..200));
    // From then on a range goes to the core as a range.
    let second = get(
        pop.setup.http(),
        &path,
        &[("Range", "bytes=2000000-2000099")],
    )
    .await;
    assert_eq!(second.status, 206);
    assert_eq!(
        second.header("content-range"),
        format!("bytes 2000000-2000099/{size}")
    );
    assert!(second.body == pattern_range(2_000_000..2_000_100));
    assert_eq!(origin.hits(), 2);
    assert!(crate::harness::entry_files(&pop, "body").is_empty());
}

/// `If-Range` needs a strong validator (RFC 9110 §13.1.5): a weak ETag never matches, so
/// the whole object comes back, while the same tag strong gets its range.
#[tokio::test]
async fn if_range_with_a_weak_etag_gets_the_whole_object() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let weak = "/bytes/1000?cc=public,max-age=600&h=etag:W/%22v1%22";
    let strong = "/bytes/1000?cc=public,max-age=600&etag=v1";
    for path in [weak, strong] {
        assert_eq!(get(pop.setup.http(), path, &[]).await.status, 200);
    }
    let range = [("Range", "bytes=0-9")];
    for if_range in ["W/\"v1\"", "\"v1\""] {
        let answer = get(pop.setup.http(), weak, &[range[0], ("If-Range", if_range)]).await;
        assert_eq!(answer.header("etag"), "W/\"v1\"");
        assert_eq!(answer.status, 200, "weak ETag, If-Range {if_range}");
        assert_eq!(answer.body.len(), 1000);
    }
    let weak_given = get(
        pop.setup.http(),
        strong,
        &[range[0], ("If-Range", "W/\"v1\"")],
    )
    .await;
    assert_eq!(weak_given.status, 200, "a weak If-Range never matches");
    let matching = get(
        pop.setup.http(),
        strong,
        &[range[0], ("If-Range", "\"v1\"")],
    )
    .await;
    assert_eq!(matching.status, 206);
    assert!(matching.body == pattern_range(0..10));
}

/// A `206` from the core is kept as the part it is: ranges inside it are answered from it,
/// and a request for more asks the core for the rest alone, then keeps the whole object.
#[tokio::test]
async fn a_partial_answer_is_kept_reused_and_completed_with_the_rest() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/1000?cc=public,max-age=600&etag=v1&partial=0-99";
    let first = get(pop.setup.http(), path, &[("Range", "bytes=2-5")]).await;
    assert_eq!(first.status, 206);
    assert_eq!(first.header("content-range"), "bytes 0-99/1000");

    let inside = get(pop.setup.http(), path, &[("Range", "bytes=10-19")]).await;
    assert_eq!(inside.status, 206);
    assert_eq!(inside.cache_status(), "HIT");
    assert_eq!(inside.header("content-range"), "bytes 10-19/1000");
    assert!(inside.body == pattern_range(10..20));
    let unsatisfiable = get(pop.setup.http(), path, &[("Range", "bytes=5000-")]).await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), "bytes */1000");
    assert_eq!(origin.hits(), 1);

    // Past the part: the core is asked for the rest alone, and the answer is whole.
    let beyond = get(pop.setup.http(), path, &[("Range", "bytes=500-509")]).await;
    assert_eq!(beyond.status, 206);
    assert_eq!(beyond.header("content-range"), "bytes 500-509/1000");
    assert!(beyond.body == pattern_range(500..510));
    assert_eq!(origin.ranges_for("/bytes/1000"), vec!["", "bytes=100-"]);
    let whole = get(pop.setup.http(), path, &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.cache_status(), "HIT");
    assert!(whole.body == pattern_range(0..1000));
    assert_eq!(origin.hits(), 2);
}

/// A `206` whose `Content-Range` disagrees with its own length cannot be placed: it is
/// passed on, never stored.
#[tokio::test]
async fn a_partial_answer_that_disagrees_with_its_length_is_not_kept() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/1000?cc=public,max-age=600&partial=0-99&claim=0-109";
    for _ in 0..2 {
        let answer = get(pop.setup.http(), path, &[("Range", "bytes=2-5")]).await;
        assert_eq!(answer.status, 206);
    }
    assert_eq!(origin.hits(), 2);
}

/// Parts are joined only when both carry the same strong validator (RFC 9111 §3.4): a
/// stored start without one is fetched again whole, never completed.
#[tokio::test]
async fn a_partial_answer_without_a_validator_is_replaced_whole_not_completed() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/1000?cc=public,max-age=600&partial=0-99";
    get(pop.setup.http(), path, &[("Range", "bytes=2-5")]).await;
    let whole = get(pop.setup.http(), path, &[]).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == pattern_range(0..1000));
    assert_eq!(origin.ranges_for("/bytes/1000"), vec!["", ""]);
}
