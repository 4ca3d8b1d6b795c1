//! The disk tier: persistence across kill -9, damaged and partial entries, the cache
//! directory's ownership and format.

use std::time::Duration;

use crate::harness::edge::{run_binary, EdgeSetup, TestCert};
use crate::harness::origin::{pattern_range, Origin};
use crate::harness::{
    entry_files, get, kill_and_restart, pop_with_cache, pop_with_cache_section,
    restartable_pop_with_cache, Cache,
};

#[tokio::test]
async fn cached_objects_survive_kill_9() {
    let origin = Origin::start().await;
    let mut pop = restartable_pop_with_cache(&origin).await;
    let small = "/@alice?cc=public,max-age=600";
    let large = "/bytes/3000000?cc=public,max-age=600";
    let small_body = get(pop.setup.http(), small, &[]).await.body;
    get(pop.setup.http(), large, &[]).await;
    kill_and_restart(&mut pop).await;
    let again = get(pop.setup.http(), small, &[]).await;
    assert_eq!(again.cache_status(), "HIT");
    assert_eq!(again.body, small_body);
    let again = get(pop.setup.http(), large, &[]).await;
    assert_eq!(again.cache_status(), "HIT");
    assert!(again.body == pattern_range(0..3_000_000));
    assert_eq!(origin.hits(), 2);
    assert_eq!(
        pop.edge
            .metric("edgecache_cache_tier_objects{tier=\"disk\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn damaged_disk_entries_are_misses_and_are_removed() {
    let origin = Origin::start().await;
    let mut pop = restartable_pop_with_cache(&origin).await;
    let paths = [
        "/bytes/1000?cc=public,max-age=600",
        "/bytes/2000000?cc=public,max-age=600",
        "/bytes/3000?cc=public,max-age=600",
    ];
    for path in paths {
        get(pop.setup.http(), path, &[]).await;
    }
    // The memory tier would answer the small ones: restart to read from disk.
    kill_and_restart(&mut pop).await;
    let bodies = entry_files(&pop, "body");
    assert_eq!(bodies.len(), 3);
    for body in &bodies {
        let mut bytes = std::fs::read(body).expect("body file");
        match bytes.len() {
            // Truncated.
            n if n < 1100 => bytes.truncate(n - 10),
            // One bit flipped in the first block of the large one, and in the middle
            // of the other small one.
            _ => bytes[16 + 500] ^= 0x01,
        }
        std::fs::write(body, bytes).expect("damage");
    }
    for path in paths {
        let answer = get(pop.setup.http(), path, &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache_status(), "MISS", "{path}");
        let size: u64 = path[7..path.find('?').expect("query")]
            .parse()
            .expect("size");
        assert!(
            answer.body == pattern_range(0..size),
            "{path} body is wrong"
        );
    }
    assert_eq!(origin.hits(), 6);
    let corrupt = pop.edge.metric("edgecache_cache_disk_corrupt_total").await;
    assert_eq!(corrupt, Some(3.0));
    // The refetched copies replaced the damaged ones.
    assert_eq!(entry_files(&pop, "body").len(), 3);
    for path in paths {
        assert_eq!(get(pop.setup.http(), path, &[]).await.cache_status(), "HIT");
    }
}

#[tokio::test]
async fn a_body_the_core_breaks_off_is_never_stored() {
    let origin = Origin::start().await;
    let pop = pop_with_cache(&origin, "").await;
    let path = "/bytes/1000000?cc=public,max-age=600&abort_at=300000";
    let client = reqwest::Client::new();
    let result = client
        .get(format!("http://{}{path}", pop.setup.http()))
        .send()
        .await
        .expect("headers arrive");
    assert!(
        result.bytes().await.is_err(),
        "a broken body must not look complete"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(entry_files(&pop, "body").is_empty());
    // Bodies arrive under tmp/<pid>/.
    let spool = pop
        .cache_dir
        .path()
        .join(format!("cache/v1/tmp/{}", pop.edge.pid()));
    let tmp = std::fs::read_dir(spool).expect("tmp").count();
    assert_eq!(tmp, 0, "the spool file was left behind");
    let result = client
        .get(format!("http://{}{path}", pop.setup.http()))
        .send()
        .await
        .expect("headers arrive");
    assert!(result.bytes().await.is_err());
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_foreign_non_empty_directory_is_never_used_as_the_cache() {
    let origin = Origin::start().await;
    let setup = EdgeSetup::new();
    let cert = TestCert::create(setup.dir.path(), "site", &["hachyderm.example"]);
    let precious = setup.path("precious");
    std::fs::create_dir(&precious).expect("dir");
    std::fs::write(precious.join("thesis.tex"), "years of work").expect("file");
    let mut config = setup.config(&[&cert], &[origin.address], "");
    config.cache = Some(Cache::default().disk(&precious, "1GiB"));
    let config = setup.write_config(&config);
    // Served here without Edge::start, which would let the ports go.
    setup.release_ports();
    let (code, _, stderr) = run_binary(&["serve", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("refusing to use"), "{stderr}");
    assert!(precious.join("thesis.tex").exists());
}

#[tokio::test]
async fn directories_of_an_older_format_are_removed_at_start() {
    let origin = Origin::start().await;
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_dir.path().join("cache");
    std::fs::create_dir_all(cache.join("v0/ab")).expect("old dir");
    std::fs::write(cache.join("EDGECACHE-CACHE-DIR"), "").expect("marker");
    std::fs::write(cache.join("v0/ab/old-entry"), "old format").expect("old entry");
    std::fs::create_dir_all(cache.join("v1/tmp")).expect("tmp");
    std::fs::write(cache.join("v1/tmp/0000000000000001.body"), "half").expect("leftover");
    let two_tiers = Cache::two_tiers(cache_dir.path());
    let pop = pop_with_cache_section(&origin, cache_dir, two_tiers).await;
    assert!(!cache.join("v0").exists());
    assert!(!cache.join("v1/tmp/0000000000000001.body").exists());
    get(pop.setup.http(), "/x?cc=public,max-age=60", &[]).await;
    assert_eq!(
        get(pop.setup.http(), "/x?cc=public,max-age=60", &[])
            .await
            .cache_status(),
        "HIT"
    );
}

#[tokio::test]
async fn empty_bodies_are_hits_from_disk_too() {
    let origin = Origin::start().await;
    let mut pop = restartable_pop_with_cache(&origin).await;
    let path = "/bytes/0?cc=public,max-age=600";
    assert_eq!(
        get(pop.setup.http(), path, &[]).await.cache_status(),
        "MISS"
    );
    kill_and_restart(&mut pop).await;
    let again = get(pop.setup.http(), path, &[]).await;
    assert_eq!((again.status, again.cache_status()), (200, "HIT"));
    assert!(again.body.is_empty());
    assert_eq!(origin.hits(), 1);
}
