//! The cache stays within its configured sizes, and large objects stream through it
//! without being held in memory.

use std::time::Duration;

use crate::cache::{get, pop_with_cache_section};
use crate::harness::origin::{pattern, Origin};

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::test]
async fn the_memory_tier_stays_within_max_size() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "cache:\n  memory:\n    max_size: 1MiB\n    max_object_size: 128KiB\n";
    let pop = pop_with_cache_section(&origin, dir, yaml).await;
    for i in 0..30 {
        let answer = get(
            pop.setup.http,
            &format!("/bytes/100000?cc=public,max-age=600&n={i}"),
            &[],
        )
        .await;
        assert_eq!(answer.body.len(), 100_000);
    }
    let bytes = pop
        .edge
        .metric("edgecache_cache_tier_bytes{tier=\"memory\"}")
        .await
        .expect("memory bytes");
    assert!(bytes <= 1024.0 * 1024.0, "memory tier holds {bytes} bytes");
    let objects = pop
        .edge
        .metric("edgecache_cache_tier_objects{tier=\"memory\"}")
        .await
        .expect("memory objects");
    assert!((1.0..=10.0).contains(&objects), "{objects} objects");
    // Larger than the memory tier takes and there is no disk tier: passed through.
    let big = "/bytes/300000?cc=public,max-age=600";
    assert_eq!(get(pop.setup.http, big, &[]).await.body.len(), 300_000);
    assert_eq!(get(pop.setup.http, big, &[]).await.cache_status(), "MISS");
}

#[tokio::test]
async fn the_disk_tier_evicts_least_recently_used_to_stay_within_max_size() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let yaml = format!(
        "cache:\n  memory:\n    max_size: 1MiB\n    max_object_size: 16KiB\n  disk:\n    path: {}\n    max_size: 5MiB\n    max_object_size: 2MiB\n",
        cache.display()
    );
    let pop = pop_with_cache_section(&origin, dir, &yaml).await;
    let path = |i: usize| format!("/bytes/1000000?cc=public,max-age=600&n={i}");
    get(pop.setup.http, &path(0), &[]).await;
    for i in 1..12 {
        get(pop.setup.http, &path(i), &[]).await;
        // Object 0 is used all the time: LRU keeps it.
        assert_eq!(
            get(pop.setup.http, &path(0), &[]).await.cache_status(),
            "HIT",
            "round {i}"
        );
        let used = dir_bytes(&cache);
        assert!(
            used <= 5 * 1024 * 1024 + 64 * 1024,
            "{used} bytes on disk after {i}"
        );
    }
    assert_eq!(
        get(pop.setup.http, &path(1), &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(
        get(pop.setup.http, &path(11), &[]).await.cache_status(),
        "HIT"
    );
    let evictions = pop
        .edge
        .metric("edgecache_cache_tier_evictions_total{tier=\"disk\"}")
        .await
        .expect("evictions");
    assert!(evictions >= 6.0, "{evictions} evictions");
    // Larger than the disk tier's max_object_size: served, not stored.
    let huge = "/bytes/3000000?cc=public,max-age=600";
    assert_eq!(get(pop.setup.http, huge, &[]).await.body.len(), 3_000_000);
    assert_eq!(get(pop.setup.http, huge, &[]).await.cache_status(), "MISS");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Reads a `/bytes/` body chunk by chunk, checking it against the pattern.
async fn stream_and_check(address: std::net::SocketAddr, path: &str, size: u64) -> String {
    let cycle: Vec<u8> = (0..(1 << 20) + 251).map(|i| pattern(i as u64)).collect();
    let mut resp = reqwest::get(format!("http://{address}{path}"))
        .await
        .expect("request");
    let status = resp
        .headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut offset = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        for piece in chunk.chunks(1 << 20) {
            let start = (offset % 251) as usize;
            assert!(
                piece == &cycle[start..start + piece.len()],
                "bad bytes at {offset}"
            );
            offset += piece.len() as u64;
        }
    }
    assert_eq!(offset, size);
    status
}

#[tokio::test]
async fn a_500_mib_video_streams_through_without_growing_memory() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "cache:\n  disk:\n    path: {}\n    max_size: 2GiB\n",
        dir.path().join("cache").display()
    );
    let pop = pop_with_cache_section(&origin, dir, &yaml).await;
    // Warm up the process (threads, pools, allocator) on a small object first.
    get(pop.setup.http, "/bytes/1000000?cc=public,max-age=600", &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = peak_rss_kib(pop.edge.pid());
    let size = 500 * 1024 * 1024u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&chunk=262144");
    assert_eq!(stream_and_check(pop.setup.http, &path, size).await, "MISS");
    eprintln!("after the miss: {} KiB", peak_rss_kib(pop.edge.pid()));
    assert_eq!(stream_and_check(pop.setup.http, &path, size).await, "HIT");
    let after = peak_rss_kib(pop.edge.pid());
    let grown_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!("peak RSS {before} KiB -> {after} KiB while a {size}-byte object went through twice");
    assert!(
        grown_mib < 16.0,
        "peak RSS grew by {grown_mib:.1} MiB ({before} → {after} KiB)"
    );
    assert_eq!(origin.hits(), 2);
}
