//! A tag on 10,000 objects spread over three PoPs, purged through one of them: every PoP
//! removes its share and nothing else, with all three up, and with one down during the
//! purge that purges its share once it is back. The time each took is printed.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::harness::fleet::*;
use crate::harness::origin::Origin;

const OBJECTS: usize = 10_000;
/// Untagged objects on each PoP, which every purge must leave.
const CONTROLS: usize = 20;
const TAG: &str = "post-42";

fn tagged(n: usize) -> String {
    format!("/statuses/{n}?cc=public,max-age=3600&h=Surrogate-Key:{TAG}%20object-{n}")
}

fn control(n: usize) -> String {
    format!("/controls/{n}?cc=public,max-age=3600")
}

/// GETs each path on its PoP, many at once over kept connections; the cache status of each.
async fn get_all(pops: &[FleetPop], paths: &[(usize, String)]) -> Vec<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let answers = futures_util::stream::iter(paths.iter().map(|(pop, path)| {
        let url = format!("http://{}{path}", pops[*pop].setup.http());
        let client = client.clone();
        async move {
            let resp = client
                .get(&url)
                .header("Host", MEDIA_HOST)
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 200, "{url}");
            let status = resp
                .headers()
                .get("x-cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            resp.bytes().await.expect("body");
            status
        }
    }))
    .buffered(32)
    .collect::<Vec<_>>()
    .await;
    answers
}

/// Stores the tagged objects, object `n` on PoP `n % 3`, and the controls on every PoP.
async fn fill(pops: &[FleetPop]) -> Duration {
    let started = Instant::now();
    let paths: Vec<(usize, String)> = (0..OBJECTS)
        .map(|n| (n % pops.len(), tagged(n)))
        .chain((0..pops.len()).flat_map(|p| (0..CONTROLS).map(move |n| (p, control(n)))))
        .collect();
    let statuses = get_all(pops, &paths).await;
    assert!(
        statuses.iter().all(|s| s == "MISS"),
        "a fill was not a miss"
    );
    started.elapsed()
}

/// Every control is still a hit everywhere, and a sample of the tagged objects (one in
/// 97, on the PoP that held it) is a miss.
async fn assert_only_the_tag_went(pops: &[FleetPop]) {
    let controls: Vec<(usize, String)> = (0..pops.len())
        .flat_map(|p| (0..CONTROLS).map(move |n| (p, control(n))))
        .collect();
    let statuses = get_all(pops, &controls).await;
    assert!(statuses.iter().all(|s| s == "HIT"), "{statuses:?}");
    let sample: Vec<(usize, String)> = (0..OBJECTS)
        .step_by(97)
        .map(|n| (n % pops.len(), tagged(n)))
        .collect();
    let statuses = get_all(pops, &sample).await;
    assert!(statuses.iter().all(|s| s == "MISS"), "{statuses:?}");
}

/// Objects each PoP removed by tag.
async fn purged_by_tag(pop: &FleetPop) -> f64 {
    pop.edge()
        .metric("edgecache_cache_purged_objects_total{kind=\"tag\"}")
        .await
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_on_ten_thousand_objects_over_three_pops_is_purged_everywhere() {
    let origin = Origin::start().await;
    let pops = fleet(&origin, &["fra", "ewr", "nrt"]).await;
    let filled = fill(&pops).await;
    assert_eq!(origin.hits(), OBJECTS + 3 * CONTROLS);

    let started = Instant::now();
    let (status, report) = admin_purge_query(&pops[0], &[("tag", TAG), ("host", MEDIA_HOST)]).await;
    let answered = started.elapsed();
    assert_eq!(status, 200, "{report}");
    // fra's share: objects 0, 3, 6, ...
    assert_eq!(report["purged"], OBJECTS.div_ceil(3), "{report}");
    for name in ["fra", "ewr", "nrt"] {
        assert_eq!(report["pops"][name], "purged", "{report}");
    }
    let mut total = 0.0;
    for pop in &pops {
        total += purged_by_tag(pop).await;
    }
    assert_eq!(total, OBJECTS as f64);
    assert_only_the_tag_went(&pops).await;
    // A reader that names no kinds (a PoP of an older version, which could not parse a tag
    // purge) is not given one; a reader that names them is.
    for (kinds, expected) in [(None, 0), (Some("url,prefix,tag"), 1)] {
        let mut request = reqwest::Client::new()
            .get(format!("http://{}/fleet/purges", pops[1].setup.admin()))
            .query(&[("after", "0")])
            .bearer_auth(crate::harness::ADMIN_TOKEN);
        if let Some(kinds) = kinds {
            request = request.query(&[("kinds", kinds)]);
        }
        let page: serde_json::Value = request
            .send()
            .await
            .expect("log page")
            .json()
            .await
            .expect("json");
        let tags = page["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["kind"] == "tag")
            .count();
        assert_eq!(tags, expected, "{kinds:?}: {page}");
    }
    eprintln!(
        "tag purge: {OBJECTS} objects over 3 PoPs (filled in {filled:?}) purged on all three in {answered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pop_down_during_a_tag_purge_removes_its_share_once_back() {
    let origin = Origin::start().await;
    let mut pops = fleet(&origin, &["fra", "ewr", "nrt"]).await;
    fill(&pops).await;

    // nrt is down when the purge arrives at fra.
    pops[2].kill().await;
    let started = Instant::now();
    let (status, report) = admin_purge_query(&pops[0], &[("tag", TAG)]).await;
    let answered = started.elapsed();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["pops"]["ewr"], "purged", "{report}");
    let nrt = report["pops"]["nrt"].as_str().unwrap_or_default();
    assert!(nrt.starts_with("queued (nrt cannot be reached"), "{report}");

    // nrt comes back with its disk cache (its entries not read yet, so its tag index is
    // empty); fra delivers the queued purge.
    let restarted = Instant::now();
    pops[2].start().await;
    pops[0]
        .edge()
        .wait_metric("edgecache_fleet_pending_purges{peer=\"nrt\"}", 0.0)
        .await;
    // Entries nrt had not read yet when the purge came are removed as they are read (in
    // the background, or by a request), and counted then.
    pops[2]
        .edge()
        .wait_metric(
            "edgecache_cache_purged_objects_total{kind=\"tag\"}",
            (OBJECTS / 3) as f64,
        )
        .await;
    let caught_up = restarted.elapsed();
    assert_eq!(purged_by_tag(&pops[2]).await, (OBJECTS / 3) as f64);
    assert_only_the_tag_went(&pops).await;
    eprintln!(
        "tag purge with nrt down: fra and ewr purged in {answered:?}; nrt purged its {} objects {caught_up:?} after its restart began",
        OBJECTS / 3
    );
}
