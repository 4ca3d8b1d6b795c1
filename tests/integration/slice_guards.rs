//! What a broken or hostile origin, or an odd request, cannot do through slices: a 206 that is
//! not the slice asked for never reaches a client or the cache, an error keeps the slices
//! already stored, a multi-range request cannot make the PoP fetch a whole object, and the
//! edges of ranges (If-Range past the end, empty objects) get the answer a whole object gets.

use crate::harness::get;
use crate::harness::origin::{pattern_range, Origin};
use crate::slices::{range_of, slicing_pop, SLICE};

#[tokio::test]
async fn a_206_that_is_not_the_slice_asked_for_is_a_502_and_never_stored() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 1_000_000u64;
    // The core labels every part as the first ten bytes, whatever it sends.
    let path = format!("/bytes/{size}?cc=public,max-age=600&claim=0-9");
    let object = format!("/bytes/{size}");
    for round in 1..=2 {
        let answer = get(pop.setup.http(), &path, &[("Range", "bytes=300000-300009")]).await;
        assert_eq!(answer.status, 502, "round {round}");
        assert!(
            answer.body.len() < 1000,
            "the part leaked: {} bytes",
            answer.body.len()
        );
        // Nothing was kept: each round asks the core again.
        assert_eq!(origin.ranges_for(&object), vec![range_of(1); round]);
    }
}

#[tokio::test]
async fn a_failing_core_breaks_the_answer_off_but_keeps_the_stored_slices() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 1_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&etag=v1");
    let object = format!("/bytes/{size}");
    let first = get(pop.setup.http(), &path, &[("Range", "bytes=0-9")]).await;
    assert_eq!(first.status, 206);
    assert_eq!(origin.ranges_for(&object), vec![range_of(0)]);

    // The whole object needs slices 1 to 3, which the core cannot give now.
    origin.fail_with(503);
    let url = format!("http://{}{path}", pop.setup.http());
    let broken = reqwest::get(&url).await.expect("answer head");
    assert_eq!(broken.status(), 200);
    assert!(
        broken.bytes().await.is_err(),
        "an answer without its middle was sent as whole"
    );

    // Slice 0 was not purged for an error: it still answers without the core.
    let stored = get(pop.setup.http(), &path, &[("Range", "bytes=10-19")]).await;
    assert_eq!(stored.status, 206);
    assert!(stored.body == pattern_range(10..20));
    assert_eq!(stored.cache_status(), "HIT");
    origin.fail_with(0);
    let whole = get(pop.setup.http(), &path, &[]).await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == pattern_range(0..size));
    let asked = origin.ranges_for(&object);
    assert_eq!(
        asked.iter().filter(|r| **r == range_of(0)).count(),
        1,
        "slice 0 fetched again: {asked:?}"
    );
}

#[tokio::test]
async fn a_multi_range_over_more_than_eight_slices_gets_its_first_part_only() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 3_000_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600");
    // One byte in each of nine slices: a multipart answer would cost nine slice fetches.
    let parts: Vec<String> = (0..9)
        .map(|i| format!("{}-{}", i * SLICE + 5, i * SLICE + 5))
        .collect();
    let range = format!("bytes={}", parts.join(","));
    let answer = get(pop.setup.http(), &path, &[("Range", &range)]).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.header("content-range"), format!("bytes 5-5/{size}"));
    assert!(answer.body == pattern_range(5..6));
    assert_eq!(
        origin.ranges_for(&format!("/bytes/{size}")),
        vec![range_of(0)]
    );

    // Eight slices are still answered in full, as multipart.
    let eight = format!("bytes={}", parts[..8].join(","));
    let answer = get(pop.setup.http(), &path, &[("Range", &eight)]).await;
    assert_eq!(answer.status, 206);
    assert!(answer
        .header("content-type")
        .starts_with("multipart/byteranges; boundary="));
    let last = format!("Content-Range: bytes {0}-{0}/{size}", 7 * SLICE + 5);
    assert!(answer
        .body
        .windows(last.len())
        .any(|w| w == last.as_bytes()));
}

#[tokio::test]
async fn a_range_past_the_end_with_an_if_range_that_fails_gets_the_whole_object() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let size = 600_000u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&etag=v1");
    // The client's copy is of another version: RFC 9110 §13.1.5 says the whole object, even
    // though its range lies past this version's end.
    let answer = get(
        pop.setup.http(),
        &path,
        &[("Range", "bytes=9000000-"), ("If-Range", "\"v0\"")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("etag"), "\"v1\"");
    assert!(answer.body == pattern_range(0..size));
    // With a matching If-Range the same range is unsatisfiable.
    let matching = get(
        pop.setup.http(),
        &path,
        &[("Range", "bytes=9000000-"), ("If-Range", "\"v1\"")],
    )
    .await;
    assert_eq!(matching.status, 416);
    assert_eq!(matching.header("content-range"), format!("bytes */{size}"));
}

#[tokio::test]
async fn any_range_of_an_empty_object_is_unsatisfiable() {
    let origin = Origin::start().await;
    let pop = slicing_pop(&origin).await;
    let path = "/bytes/0?cc=public,max-age=600";
    for range in ["bytes=0-1", "bytes=-5", "bytes=0-"] {
        let answer = get(pop.setup.http(), path, &[("Range", range)]).await;
        assert_eq!(answer.status, 416, "{range}");
        assert_eq!(answer.header("content-range"), "bytes */0", "{range}");
        assert!(answer.body.is_empty());
    }
    let whole = get(pop.setup.http(), path, &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-length"), "0");
    assert!(whole.body.is_empty());
}
