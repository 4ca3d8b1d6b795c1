//! A shield that fails: killed under load, cut off from its core, answering for a stale
//! copy it cannot refresh, or holding a copy older than a purge made on the PoP. The PoPs
//! go on to the core without a failed request or a purged object coming back.

use std::time::{Duration, Instant};

use crate::harness::fleet::*;
use crate::harness::origin::Origin;
use crate::shield::{get_many, one_shield, shielded, SHIELD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_killed_under_load_is_skipped_and_no_request_fails() {
    let origin = Origin::start().await;
    let mut pops = shielded(&origin, &["fra", "ewr", "nrt"]).await;
    let round = |round: usize| -> Vec<(usize, String)> {
        (0..90)
            .map(|n| {
                (
                    n % 3,
                    format!("/objects/{round}/{}?cc=public,max-age=3600", n / 3),
                )
            })
            .collect()
    };
    // Warm: through the shield.
    {
        let edges: Vec<&FleetPop> = pops[1..].iter().collect();
        let answers = get_many(&edges, &round(0), 16).await;
        assert!(answers.iter().all(|(s, _)| *s == 200));
        assert_eq!(origin.hits(), 30, "each object once, through the shield");
    }
    // Rounds of new objects keep coming while the shield is killed.
    let (shield, rest) = pops.split_at_mut(1);
    let edges: Vec<&FleetPop> = rest.iter().collect();
    let load = async {
        let mut statuses = Vec::new();
        for n in 1..=12 {
            statuses.extend(
                get_many(&edges, &round(n), 16)
                    .await
                    .into_iter()
                    .map(|a| a.0),
            );
        }
        statuses
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        shield[0].kill().await;
        Instant::now()
    };
    let (statuses, killed_at) = tokio::join!(load, kill);
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {statuses:?}",
        statuses.len()
    );
    // After the kill, a new object goes straight to the core at once.
    let started = Instant::now();
    let answer = edges[0].get("/after/kill?cc=public,max-age=3600").await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200);
    assert_eq!(origin.hits_for("/after/kill"), 1);
    let mut skipped = 0.0;
    for pop in &edges {
        for reason in ["connect", "error", "none_left"] {
            let sample = format!(
                "edgecache_shield_skipped_total{{group=\"shield:shd\",reason=\"{reason}\"}}"
            );
            skipped += pop.edge().metric(&sample).await.unwrap_or(0.0);
        }
    }
    assert!(skipped > 0.0, "no request went on without the shield");
    eprintln!(
        "shield killed: {} requests over 3 PoPs, 0 failed; a miss after the kill took {took:?} ({:?} after it)",
        statuses.len(),
        killed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_cut_off_from_the_core_is_skipped_for_the_pops_own_way() {
    let origin = Origin::start().await;
    // The shield's way to the core is broken (nothing listens where it looks for it).
    let nowhere = crate::harness::free_address();
    let plan = FleetPlan {
        change_config: &|pop, config| {
            if pop == SHIELD {
                config.group("web").hosts = vec![nowhere.to_string()];
            }
        },
        ..one_shield()
    };
    let pops = start_fleet(&origin, &[SHIELD, "fra"], &plan).await;
    let answer = pops[1].get("/cut-off/1?cc=public,max-age=300").await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(origin.hits_for("/cut-off/1"), 1);
    assert_eq!(
        pops[1]
            .edge()
            .metric("edgecache_shield_skipped_total{group=\"shield:shd\",reason=\"status\"}")
            .await,
        Some(1.0)
    );
    // Stored here as the core sent it: the next one is a hit.
    assert_eq!(
        pops[1]
            .get("/cut-off/1?cc=public,max-age=300")
            .await
            .cache_status(),
        "HIT"
    );
}

/// Points this PoP's purges for `peer` at a port nobody listens on: they wait in its
/// outbox, as while a link to that peer is down.
fn purges_for_peer_go_nowhere(config: &mut crate::harness::Config, peer: &str) {
    let nowhere = crate::harness::free_address().to_string();
    let peers = config
        .sections
        .get_mut("fleet")
        .and_then(|fleet| fleet.get_mut("peers"))
        .and_then(|peers| peers.as_sequence_mut())
        .expect("fleet peers");
    for entry in peers
        .iter_mut()
        .filter(|p| p["name"].as_str() == Some(peer))
    {
        entry["admin"] = nowhere.clone().into();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shields_copy_older_than_a_purge_made_here_is_not_taken() {
    let origin = Origin::start().await;
    let plan = FleetPlan {
        change_config: &|pop, config| {
            if pop == "fra" {
                purges_for_peer_go_nowhere(config, SHIELD);
            }
        },
        ..one_shield()
    };
    let pops = start_fleet(&origin, &[SHIELD, "fra"], &plan).await;
    let fra = &pops[1];
    let by_url = "/purged/url?cc=public,max-age=3600";
    let by_tag = "/purged/tag?cc=public,max-age=3600&h=Surrogate-Key:post-7";
    for path in [by_url, by_tag] {
        assert_eq!(fra.get(path).await.status, 200);
    }
    assert_eq!(origin.hits(), 2);
    // The purges reach fra's cache; the shield has not had them.
    let url = format!("http://{MEDIA_HOST}{by_url}");
    let (status, report) = admin_purge(fra, &url).await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["pops"][SHIELD]
            .as_str()
            .unwrap_or_default()
            .starts_with("queued"),
        "{report}"
    );
    let (status, report) = admin_purge_query(fra, &[("tag", "post-7")]).await;
    assert_eq!(status, 200, "{report}");
    // Each miss asks the shield, whose copy predates the purge: it goes to the core.
    for path in [by_url, by_tag] {
        let answer = fra.get(path).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache_status(), "MISS");
    }
    assert_eq!(
        origin.hits_for("/purged/url"),
        2,
        "the purged copy came back from the shield"
    );
    assert_eq!(
        origin.hits_for("/purged/tag"),
        2,
        "the purged copy came back from the shield"
    );
    assert_eq!(
        fra.edge()
            .metric("edgecache_shield_skipped_total{group=\"shield:shd\",reason=\"purged\"}")
            .await,
        Some(2.0)
    );
    // What the core sent now is kept: the next ones are hits.
    for path in [by_url, by_tag] {
        assert_eq!(fra.get(path).await.cache_status(), "HIT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_is_refreshed_from_the_core_when_the_shield_cannot_reach_it() {
    let origin = Origin::start().await;
    // The shield has a core of its own, which goes away; it serves nothing stale itself.
    let shields_core = Origin::start().await;
    let shields_core_address = shields_core.address;
    let plan = FleetPlan {
        change_config: &|pop, config| {
            if pop == SHIELD {
                config.group("web").hosts = vec![shields_core_address.to_string()];
                config
                    .cache()
                    .more
                    .insert("serve_stale_on_error".into(), "0s".into());
            }
        },
        ..one_shield()
    };
    let pops = start_fleet(&origin, &[SHIELD, "fra"], &plan).await;
    let path = "/stale/1?cc=public,max-age=1";
    assert_eq!(pops[1].get(path).await.status, 200);
    assert_eq!(shields_core.hits_for("/stale/1"), 1);
    drop(shields_core);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // fra's copy is stale; the shield answers its revalidation with a 502 of its own.
    let answer = pops[1].get(path).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        origin.hits_for("/stale/1"),
        1,
        "fra served its stale copy rather than asking the core ({})",
        answer.cache_status()
    );
}
