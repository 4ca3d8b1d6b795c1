//! Purges that reach every PoP: three edges on 127.0.0.1 that list each other as a fleet,
//! one of them stopped during the purge and started after, and Mastodon's cache buster.

use std::time::Instant;

use crate::harness::fleet::*;
use crate::harness::origin::Origin;
use crate::harness::{get, EdgeSetup};

#[tokio::test]
async fn a_purge_reaches_every_pop_and_one_that_was_down_catches_up() {
    let origin = Origin::start().await;
    let mut pops = fleet(&origin, &["fra", "ewr", "nrt"]).await;
    let media = "/system/media_attachments/files/1/original/deleted.png?cc=public,max-age=3600";
    let kept = "/system/media_attachments/files/2/original/kept.png?cc=public,max-age=3600";
    for pop in &pops {
        assert_eq!(pop.get(media).await.cache_status(), "MISS", "{}", pop.name);
        assert_eq!(pop.get(media).await.cache_status(), "HIT", "{}", pop.name);
        pop.get(kept).await;
    }
    assert_eq!(origin.hits(), 6);

    // nrt is down when the purge arrives at fra.
    pops[2].kill().await;
    let started = Instant::now();
    // Without a scheme: both are purged (these test PoPs serve plain HTTP).
    let (status, report) = admin_purge(&pops[0], &format!("{MEDIA_HOST}{media}")).await;
    let answered = started.elapsed();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["pops"]["fra"], "purged", "{report}");
    assert_eq!(report["pops"]["ewr"], "purged", "{report}");
    let nrt = report["pops"]["nrt"].as_str().unwrap_or_default();
    assert!(nrt.starts_with("queued (nrt cannot be reached"), "{report}");
    for pop in &pops[..2] {
        assert_eq!(pop.get(media).await.cache_status(), "MISS", "{}", pop.name);
        assert_eq!(pop.get(kept).await.cache_status(), "HIT", "{}", pop.name);
    }
    pops[0]
        .edge()
        .wait_metric("edgecache_fleet_pending_purges{peer=\"nrt\"}", 1.0)
        .await;

    // A purge a peer passed on goes no further: ewr got it once, from fra, and sent
    // nothing anywhere.
    assert_eq!(
        pops[1]
            .edge()
            .metric("edgecache_purges_received_total{source=\"peer\"}")
            .await,
        Some(1.0)
    );
    let (_, ewr_metrics) = pops[1].edge().admin_get("/metrics").await;
    assert!(
        !ewr_metrics.contains("edgecache_fleet_purge_deliveries_total{"),
        "ewr passed the purge on"
    );

    // fra goes down too, with the purge for nrt queued: it is on disk, not in memory.
    // ewr, whose log nrt would read at start, is down as well.
    pops[0].kill().await;
    pops[1].kill().await;
    // nrt comes back with its disk cache, deleted object included, then fra; fra
    // delivers the purge.
    pops[2].start().await;
    assert_eq!(
        pops[2].get(media).await.cache_status(),
        "HIT",
        "not purged yet"
    );
    let restarted = Instant::now();
    pops[0].start().await;
    pops[0]
        .edge()
        .wait_metric("edgecache_fleet_pending_purges{peer=\"nrt\"}", 0.0)
        .await;
    let caught_up = restarted.elapsed();
    assert_eq!(pops[2].get(media).await.cache_status(), "MISS");
    assert_eq!(pops[2].get(kept).await.cache_status(), "HIT");
    assert_eq!(
        pops[2]
            .edge()
            .metric("edgecache_purges_received_total{source=\"peer\"}")
            .await,
        Some(1.0)
    );
    eprintln!(
        "fleet purge: fra and ewr answered in {answered:?}; nrt caught up {caught_up:?} after fra's restart began"
    );
}

#[tokio::test]
async fn a_pop_that_was_down_catches_up_from_any_peer_when_the_purges_origin_is_gone() {
    let origin = Origin::start().await;
    let mut pops = fleet_with(&origin, &["fra", "ewr", "nrt"], "PURGE", "300ms").await;
    let media = "/system/media_attachments/files/3/original/gone.png?cc=public,max-age=3600";
    let kept = "/system/media_attachments/files/4/original/kept.png?cc=public,max-age=3600";
    for pop in &pops {
        pop.get(media).await;
        assert_eq!(pop.get(media).await.cache_status(), "HIT", "{}", pop.name);
        pop.get(kept).await;
    }

    // nrt is down; fra takes the purge, ewr gets it, nrt's copy waits in fra's outbox.
    pops[2].kill().await;
    let (status, report) = admin_purge(&pops[0], &format!("{MEDIA_HOST}{media}")).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["pops"]["ewr"], "purged", "{report}");
    // fra is lost for good, its outbox with it.
    pops[0].kill().await;
    std::fs::remove_dir_all(pops[0].setup.path("fleet")).expect("fra's state");

    // nrt comes back with the deleted object on disk and reads ewr's purge log.
    let restarted = Instant::now();
    pops[2].start().await;
    let nrt = pops[2].edge();
    nrt.wait_metric("edgecache_fleet_catch_up_purges_total{peer=\"ewr\"}", 1.0)
        .await;
    let caught_up = restarted.elapsed();
    assert_eq!(pops[2].get(media).await.cache_status(), "MISS");
    assert_eq!(pops[2].get(kept).await.cache_status(), "HIT");
    assert_eq!(
        nrt.metric("edgecache_purges_received_total{source=\"catch_up\"}")
            .await,
        Some(1.0)
    );
    // Read again on the next rounds, the log adds nothing twice.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(
        nrt.metric("edgecache_fleet_catch_up_purges_total{peer=\"ewr\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        nrt.metric("edgecache_fleet_catch_up_gaps_total{peer=\"ewr\"}")
            .await,
        Some(0.0)
    );
    // fra cannot be read; that is counted, not fatal.
    assert!(
        nrt.metric("edgecache_fleet_catch_up_errors_total{peer=\"fra\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    eprintln!("fleet catch-up: nrt purged from ewr's log {caught_up:?} after its restart began");
}

#[tokio::test]
async fn a_peer_log_that_was_wiped_is_read_from_its_start() {
    let origin = Origin::start().await;
    let mut pops = fleet_with(&origin, &["fra", "ewr"], "PURGE", "300ms").await;
    let first = "/system/media_attachments/files/5/original/first.png?cc=public,max-age=3600";
    let second = "/system/media_attachments/files/6/original/second.png?cc=public,max-age=3600";
    let third = "/system/media_attachments/files/7/original/third.png?cc=public,max-age=3600";
    for path in [first, second, third] {
        pops[1].get(path).await;
        assert_eq!(pops[1].get(path).await.cache_status(), "HIT");
    }
    // ewr gets a purge, and reads it in fra's log too: its cursor there moves to 1.
    let (status, report) = admin_purge(&pops[0], &format!("{MEDIA_HOST}{first}")).await;
    assert_eq!(status, 200, "{report}");
    let cursor = pops[1].setup.path("fleet/cursors/fra.json");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&cursor).is_ok_and(|c| c.contains("\"seq\":1")) {
        assert!(Instant::now() < deadline, "ewr never read fra's log");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // ewr goes down; fra loses its state and starts over with a new, empty log.
    pops[1].kill().await;
    pops[0].kill().await;
    std::fs::remove_dir_all(pops[0].setup.path("fleet")).expect("fra's state");
    pops[0].start().await;
    // fra takes two more purges, and its outbox is lost before ewr is back: only fra's new
    // log can bring them, where they are entries 1 and 2, and ewr's cursor says 1 was read.
    for path in [second, third] {
        let (status, report) = admin_purge(&pops[0], &format!("{MEDIA_HOST}{path}")).await;
        assert_eq!(status, 200, "{report}");
    }
    pops[0].kill().await;
    std::fs::remove_dir_all(pops[0].setup.path("fleet/outbox")).expect("fra's outbox");
    pops[0].start().await;
    pops[1].start().await;
    pops[1]
        .edge()
        .wait_metric("edgecache_fleet_catch_up_purges_total{peer=\"fra\"}", 2.0)
        .await;
    assert_eq!(pops[1].get(second).await.cache_status(), "MISS");
    assert_eq!(pops[1].get(third).await.cache_status(), "MISS");
}

#[tokio::test]
async fn mastodons_cache_buster_purges_the_url_on_every_pop() {
    let origin = Origin::start().await;
    // The test origin answers 200 to any method, PURGE included, where a core answers 404
    // or 405; with invalidation on, that success would rightly remove the URL here (see
    // `conformance`), which is not what this test is about.
    let pops = fleet_with_cache(&origin, &["fra", "ewr"], "PURGE", "1h", &|cache| {
        cache.more.insert("invalidation".into(), "off".into());
    })
    .await;
    let path = "/system/media_attachments/files/110/original/a1b2.jpeg?cc=public,max-age=3600";
    for pop in &pops {
        pop.get(path).await;
        assert_eq!(pop.get(path).await.cache_status(), "HIT");
    }
    let hits = origin.hits();
    let client = reqwest::Client::new();
    let bust = |secret: &'static str| {
        client
            .request(
                reqwest::Method::from_bytes(b"PURGE").expect("method"),
                format!("http://{}{path}", pops[1].setup.http()),
            )
            // As Mastodon's CacheBuster sends it (app/lib/cache_buster.rb through its
            // Request class): the media URL, the configured method and secret header.
            .header("Host", MEDIA_HOST)
            .header(
                "User-Agent",
                "http.rb/5.2.0 (Mastodon/4.3.0; +https://hachyderm.example/)",
            )
            .header("X-Cache-Buster-Secret", secret)
            .send()
    };

    // With the wrong secret it is an ordinary request for the core, and purges nothing.
    bust("guess").await.expect("request");
    assert_eq!(pops[0].get(path).await.cache_status(), "HIT");
    assert_eq!(pops[1].get(path).await.cache_status(), "HIT");

    let resp = bust(BUSTER_SECRET).await.expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let report: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(report["pops"]["ewr"], "purged", "{report}");
    assert_eq!(report["pops"]["fra"], "purged", "{report}");
    for pop in &pops {
        assert_eq!(pop.get(path).await.cache_status(), "MISS", "{}", pop.name);
    }
    // The origin saw the two refetches and the wrong-secret request, never the buster's.
    assert_eq!(origin.hits(), hits + 3);
    assert_eq!(
        pops[1]
            .edge()
            .metric("edgecache_purges_received_total{source=\"cache_buster\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn the_cli_purges_through_the_local_admin_listener() {
    let origin = Origin::start().await;
    let pops = fleet(&origin, &["fra", "ewr"]).await;
    let path = "/system/accounts/avatars/1/original/me.png?cc=public,max-age=3600";
    for pop in &pops {
        pop.get(path).await;
    }
    let config = pops[0].config.to_str().expect("utf-8").to_string();
    let url = format!("{MEDIA_HOST}/system/accounts/avatars/");
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        crate::harness::run_binary(&["purge", "--config", &config, "--prefix", &url])
    })
    .await
    .expect("cli");
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json report");
    assert_eq!(report["purged"], 1, "{report}");
    assert_eq!(report["pops"]["ewr"], "purged", "{report}");
    for pop in &pops {
        assert_eq!(pop.get(path).await.cache_status(), "MISS", "{}", pop.name);
    }
}

#[test]
fn bad_fleet_settings_name_file_line_and_key() {
    let setup = EdgeSetup::new();
    let (http, admin) = setup.configured_http_and_admin();
    let config = format!(
        "listeners:\n  - name: http\n    address: \"{http}\"\nadmin:\n  address: \"{admin}\"\ncore:\n  groups:\n    web:\n      hosts: [\"127.0.0.1:3000\"]\nfleet:\n  name: fra\n  peers:\n    - {{ name: fra, admin: \"127.0.0.1:9901\" }}\n    - {{ name: ewr, admin: \"http://127.0.0.1:9901/\" }}\n  state_dir: fleet\n  catch_up_interval: 10ms\n  log_entries: 50\ncache_buster:\n  method: PURGE\n  secret_header: \"bad header\"\n  secret_file: /nonexistent/edgecache/buster.secret\n",
    );
    let path = setup.write_config_text(&config);
    let path = path.to_str().expect("utf-8");
    let (code, _, stderr) = crate::harness::run_binary(&["check-config", path]);
    assert_eq!(code, 64, "{stderr}");
    for expected in [
        ":10: fleet: a fleet needs admin.token_file",
        ":13: fleet.peers[0].name: \"fra\" is listed twice (or is this PoP's own name)",
        ":14: fleet.peers[1].admin: invalid admin address \"http://127.0.0.1:9901/\"",
        ":16: fleet.catch_up_interval: must be at least 100ms",
        ":17: fleet.log_entries: must be at least 10000",
        ":20: cache_buster.secret_header: invalid header name \"bad header\"",
        ":21: cache_buster.secret_file: cannot read /nonexistent/edgecache/buster.secret",
    ] {
        assert!(
            stderr.contains(&format!("{path}{expected}")),
            "wanted {expected:?} in {stderr}"
        );
    }
}

#[tokio::test]
async fn with_mastodons_default_get_the_secret_header_makes_a_get_a_purge() {
    let origin = Origin::start().await;
    let pops = fleet_with_buster_method(&origin, &["fra", "ewr"], "GET").await;
    let path = "/system/media_attachments/files/7/small/x.webp?cc=public,max-age=3600";
    for pop in &pops {
        pop.get(path).await;
    }
    // A GET without the secret is an ordinary GET, answered from the cache.
    assert_eq!(pops[0].get(path).await.cache_status(), "HIT");
    let answer = get(
        pops[0].setup.http(),
        path,
        &[
            ("Host", MEDIA_HOST),
            ("X-Cache-Buster-Secret", BUSTER_SECRET),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["pops"]["ewr"], "purged");
    for pop in &pops {
        assert_eq!(pop.get(path).await.cache_status(), "MISS", "{}", pop.name);
    }
}

#[tokio::test]
async fn an_invalidation_reaches_the_fleet_when_configured_to() {
    let origin = Origin::start().await;
    let pops = fleet_with_cache(&origin, &["fra", "ewr"], "PURGE", "1h", &|cache| {
        cache.more.insert("invalidation".into(), "fleet".into());
    })
    .await;
    let page = "/@alice/1?cc=public,max-age=3600";
    for pop in &pops {
        pop.get(page).await;
        assert_eq!(pop.get(page).await.cache_status(), "HIT", "{}", pop.name);
    }
    // A DELETE through fra: fra drops its copy before answering, ewr when the purge
    // arrives.
    let deleted = reqwest::Client::new()
        .delete(format!("http://{}{page}", pops[0].setup.http()))
        .header("Host", MEDIA_HOST)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    assert_eq!(pops[0].get(page).await.cache_status(), "MISS");
    pops[1]
        .edge()
        .wait_metric("edgecache_purges_received_total{source=\"peer\"}", 1.0)
        .await;
    assert_eq!(pops[1].get(page).await.cache_status(), "MISS");
}
