//! The cache stays within its configured sizes, and large objects stream through it
//! without being held in memory.

use std::time::Duration;

use crate::harness::origin::{pattern, Origin};
use crate::harness::{get, pop_with_cache_config, pop_with_cache_section, Cache, Route};

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
    let cache = Cache::default().memory("1MiB", "128KiB");
    let pop = pop_with_cache_section(&origin, dir, cache).await;
    for i in 0..30 {
        let answer = get(
            pop.setup.http(),
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
    assert_eq!(get(pop.setup.http(), big, &[]).await.body.len(), 300_000);
    assert_eq!(get(pop.setup.http(), big, &[]).await.cache_status(), "MISS");
}

#[tokio::test]
async fn the_disk_tier_evicts_least_recently_used_to_stay_within_max_size() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let mut section = Cache::default()
        .memory("1MiB", "16KiB")
        .disk(&cache, "5MiB");
    section.disk_tier().max_object_size = Some("2MiB".to_string());
    let pop = pop_with_cache_section(&origin, dir, section).await;
    let path = |i: usize| format!("/bytes/1000000?cc=public,max-age=600&n={i}");
    get(pop.setup.http(), &path(0), &[]).await;
    for i in 1..12 {
        get(pop.setup.http(), &path(i), &[]).await;
        // Object 0 is used all the time: LRU keeps it.
        assert_eq!(
            get(pop.setup.http(), &path(0), &[]).await.cache_status(),
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
        get(pop.setup.http(), &path(1), &[]).await.cache_status(),
        "MISS"
    );
    assert_eq!(
        get(pop.setup.http(), &path(11), &[]).await.cache_status(),
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
    assert_eq!(get(pop.setup.http(), huge, &[]).await.body.len(), 3_000_000);
    assert_eq!(
        get(pop.setup.http(), huge, &[]).await.cache_status(),
        "MISS"
    );
}

/// What a directory tree takes on its filesystem: blocks allocated to its regular files
/// (what `du` counts, not their lengths), how many there are, and how many directories.
#[derive(Debug)]
struct Allocated {
    file_bytes: u64,
    files: u64,
    dirs: u64,
}

fn allocated(dir: &std::path::Path) -> Allocated {
    use std::os::unix::fs::MetadataExt;
    let mut total = Allocated {
        file_bytes: 0,
        files: 0,
        dirs: 1,
    };
    // Entries come and go while the tier works: one that vanished between the listing and
    // its stat costs nothing.
    let Ok(listing) = std::fs::read_dir(dir) else {
        return total;
    };
    for entry in listing.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            let below = allocated(&entry.path());
            total.file_bytes += below.file_bytes;
            total.files += below.files;
            total.dirs += below.dirs;
        } else {
            total.file_bytes += meta.blocks() * 512;
            total.files += 1;
        }
    }
    total
}

/// Fetches `count` distinct small cacheable answers through the edge, 16 at a time.
async fn fetch_distinct(address: std::net::SocketAddr, count: usize, path: fn(usize) -> String) {
    const IN_FLIGHT: usize = 16;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut workers = Vec::new();
    for first in 0..IN_FLIGHT {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            for i in (first..count).step_by(IN_FLIGHT) {
                let resp = client
                    .get(format!("http://{address}{}", path(i)))
                    .send()
                    .await
                    .expect("request");
                resp.bytes().await.expect("body");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
}

/// The filesystem block of the test's directory: what one small file costs.
fn block_size(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).expect("metadata").blksize()
}

#[tokio::test]
async fn thousands_of_small_entries_stay_within_the_disk_tiers_allocated_bytes() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let block = block_size(dir.path());
    let max_size: u64 = 1024 * 1024;
    let mut section = Cache::default()
        .memory("1MiB", "16KiB")
        .disk(&cache, "1MiB");
    section.disk_tier().max_object_size = Some("64KiB".to_string());
    let pop = pop_with_cache_section(&origin, dir, section).await;
    // Small media 404s: a few hundred bytes each, and two files of at least a block each
    // on disk.
    fetch_distinct(pop.setup.http(), 3000, |i| {
        format!("/status/404?cc=public,max-age=600&n={i}")
    })
    .await;
    // The last commits delete their victims just after their answers went out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let used = allocated(&cache);
    let reported = pop
        .edge
        .metric("edgecache_cache_tier_bytes{tier=\"disk\"}")
        .await
        .expect("disk bytes");
    eprintln!(
        "3000 small 404s under a {max_size}-byte disk tier: {used:?}; the tier says it holds {reported} bytes"
    );
    // Slack: the marker file that claims the directory (one block, outside the tier) and one
    // entry (two files) whose victims a commit may still be deleting.
    let slack = block + 2 * block;
    assert!(
        used.file_bytes <= max_size + slack,
        "{} bytes allocated to {} files under a {max_size}-byte disk tier",
        used.file_bytes,
        used.files
    );
    // The format directory, its spool, the process's spool and up to 256 shards: a fixed
    // skeleton outside max_size.
    assert!(used.dirs <= 260, "{} directories", used.dirs);
    assert!(
        reported <= max_size as f64,
        "the disk tier says it holds {reported} bytes"
    );
    assert!(
        reported + slack as f64 >= used.file_bytes as f64,
        "the disk tier says it holds {reported} bytes; its files take {}",
        used.file_bytes
    );
}

#[tokio::test]
async fn the_disk_tier_keeps_at_most_max_entries() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let mut section = Cache::default()
        .memory("1MiB", "16KiB")
        .disk(&cache, "64MiB");
    section.disk_tier().max_object_size = Some("1MiB".to_string());
    section.disk_tier().max_entries = Some(100);
    let pop = pop_with_cache_section(&origin, dir, section).await;
    // Bytes would allow thousands: the entry bound is what holds.
    fetch_distinct(pop.setup.http(), 1000, |i| {
        format!("/bytes/200?cc=public,max-age=600&n={i}")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let used = allocated(&cache);
    let entries = pop
        .edge
        .metric("edgecache_cache_tier_objects{tier=\"disk\"}")
        .await
        .expect("disk entries");
    eprintln!(
        "1000 small answers under max_entries 100: {used:?}; the tier says {entries} entries"
    );
    assert_eq!(entries, 100.0);
    // Two files an entry, and the marker; the spool is empty once nothing is arriving.
    assert_eq!(used.files, 2 * 100 + 1, "{used:?}");
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
    let cache = Cache::default().disk(&dir.path().join("cache"), "2GiB");
    let pop = pop_with_cache_section(&origin, dir, cache).await;
    // Warm up the process (threads, pools, allocator) on a small object first.
    get(
        pop.setup.http(),
        "/bytes/1000000?cc=public,max-age=600",
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = peak_rss_kib(pop.edge.pid());
    let size = 500 * 1024 * 1024u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&chunk=262144");
    assert_eq!(
        stream_and_check(pop.setup.http(), &path, size).await,
        "MISS"
    );
    eprintln!("after the miss: {} KiB", peak_rss_kib(pop.edge.pid()));
    assert_eq!(stream_and_check(pop.setup.http(), &path, size).await, "HIT");
    let after = peak_rss_kib(pop.edge.pid());
    let grown_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!("peak RSS {before} KiB -> {after} KiB while a {size}-byte object went through twice");
    assert!(
        grown_mib < 16.0,
        "peak RSS grew by {grown_mib:.1} MiB ({before} → {after} KiB)"
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_video_served_in_slices_streams_through_without_growing_memory() {
    let origin = Origin::start().await;
    let pop = pop_with_cache_config(&origin, |config, dir| {
        // Slices fit the memory tier: its 4 MiB are part of what the process may grow by.
        config.cache = Some(
            Cache::default()
                .memory("4MiB", "1MiB")
                .disk(&dir.join("cache"), "2GiB"),
        );
        config.add_routes([Route::at("/bytes/").with("slice", "true")]);
    })
    .await;
    // The steady state of slicing (two slices in flight, the memory tier full, buffers and
    // the allocator's pools) first, on a 30 MiB object streamed twice; then ten times as
    // much must not need more.
    let warm = "/bytes/31457280?cc=public,max-age=600&chunk=262144";
    for _ in 0..2 {
        stream_and_check(pop.setup.http(), warm, 30 * 1024 * 1024).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = peak_rss_kib(pop.edge.pid());
    let size = 300 * 1024 * 1024u64;
    let path = format!("/bytes/{size}?cc=public,max-age=600&chunk=262144");
    assert_eq!(
        stream_and_check(pop.setup.http(), &path, size).await,
        "MISS"
    );
    assert_eq!(stream_and_check(pop.setup.http(), &path, size).await, "HIT");
    let after = peak_rss_kib(pop.edge.pid());
    let grown_mib = (after.saturating_sub(before)) as f64 / 1024.0;
    eprintln!(
        "peak RSS {before} KiB -> {after} KiB while {size} bytes went through twice in slices"
    );
    // That no more than two slices are held per client is also
    // `slices::a_client_that_stops_reading_...`.
    assert!(
        grown_mib < 16.0,
        "peak RSS grew by {grown_mib:.1} MiB ({before} → {after} KiB)"
    );
    // One request per slice, each once.
    assert_eq!(origin.hits_for(&format!("/bytes/{size}")), 300);
}

/// Transparent huge pages would round every allocator region the PoP touches up to 2 MiB
/// (an idle PoP held 14 to 30 MiB more than it used); it turns them off for itself.
#[tokio::test]
async fn the_pop_runs_without_transparent_huge_pages() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::default().memory("1MiB", "128KiB");
    let pop = pop_with_cache_section(&origin, dir, cache).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pop.edge.pid()))
        .expect("the process's status");
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
}
