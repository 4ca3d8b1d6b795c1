//! Write-through: media found outside the object store is copied into it in the
//! background, once whole, through a queue on disk that survives `kill -9`.

use std::time::{Duration, Instant};

use crate::harness::origin::pattern_range;
use crate::harness::{entry_files, get, kill_and_restart};
use crate::harness::{media_pop_with, MediaConfig, MediaPop, Ports};

/// `spaces` first, then the old server; what the old server has is written to `spaces`.
fn config(queue: &'static [(&'static str, &'static str)]) -> MediaConfig<'static> {
    MediaConfig {
        chain: &["spaces", "disk", "old"],
        write_through: &["spaces"],
        queue: Some(queue),
        ..MediaConfig::default()
    }
}

/// The queue's settings: retries quick enough for a test.
const QUEUE: &[(&str, &str)] = &[("retry_min", "100ms"), ("retry_max", "500ms")];

/// Waits until `edgecache_write_through_jobs_total{event=...}` reaches `count`.
async fn wait_jobs(media: &MediaPop, event: &str, count: f64) {
    let sample = format!("edgecache_write_through_jobs_total{{event=\"{event}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = media.metric(&sample).await;
        if value >= count {
            assert_eq!(value, count, "{sample}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stayed at {value}, wanted {count}; log: {}",
            media.pop.edge.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn media_from_legacy_places_lands_in_the_store_byte_exact() {
    let media = media_pop_with(config(QUEUE)).await;
    media.legacy_file("media_attachments/c.png", &pattern_range(7..70_007));
    let http = media.pop.setup.http();
    let from_old = get(http, "/system/300000", &[]).await;
    assert_eq!(from_old.status, 200);
    assert!(from_old.body == pattern_range(0..300_000));
    let from_disk = get(http, "/system/media_attachments/c.png", &[]).await;
    assert!(from_disk.body == pattern_range(7..70_007));
    wait_jobs(&media, "done", 2.0).await;
    assert!(media.s3.get("300000").await == Some(pattern_range(0..300_000)));
    assert!(media.s3.get("media_attachments/c.png").await == Some(pattern_range(7..70_007)));
    assert_eq!(media.origin.hits_for("/bytes/300000"), 1);
}

#[tokio::test]
async fn an_object_already_in_the_store_is_never_overwritten() {
    let media = media_pop_with(MediaConfig {
        chain: &["disk", "spaces"],
        ..config(QUEUE)
    })
    .await;
    media.s3.put("a.png", b"the store's own copy").await;
    media.legacy_file("a.png", b"an older copy on the old disk");
    let answer = get(media.pop.setup.http(), "/system/a.png", &[]).await;
    assert_eq!(answer.body, b"an older copy on the old disk");
    wait_jobs(&media, "done", 1.0).await;
    assert_eq!(
        media.s3.get("a.png").await.as_deref(),
        Some(&b"the store's own copy"[..])
    );
}

#[tokio::test]
async fn a_body_cut_off_mid_way_is_never_uploaded() {
    let media = media_pop_with(MediaConfig {
        old_base: "/cut/",
        ..config(QUEUE)
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/system/200000", media.pop.setup.http());
    let outcome = match client.get(&url).send().await {
        Ok(resp) => resp.bytes().await.map(|b| b.len()),
        Err(e) => Err(e),
    };
    assert!(
        outcome.as_ref().map_or(true, |len| *len < 200_000),
        "the client must not get a whole body: {outcome:?}"
    );
    // Give a (wrong) upload every chance to happen.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(media.s3.get("200000").await, None);
    assert_eq!(
        media
            .metric("edgecache_write_through_jobs_total{event=\"queued\"}")
            .await,
        0.0
    );
    assert_eq!(
        media.metric("edgecache_write_through_queue_jobs").await,
        0.0
    );
}

#[tokio::test]
async fn jobs_wait_on_disk_while_the_store_is_down_and_survive_kill_9() {
    let mut media = media_pop_with(MediaConfig {
        ports: Ports::Kept,
        ..config(QUEUE)
    })
    .await;
    media.s3.stop();
    let http = media.pop.setup.http();
    for n in [1000, 2000, 3000] {
        let answer = get(http, &format!("/system/{n}"), &[]).await;
        assert_eq!(
            answer.status, 200,
            "the old server answers while the store is down"
        );
        assert!(answer.body == pattern_range(0..n));
    }
    wait_jobs(&media, "queued", 3.0).await;
    // Let a few attempts fail, then kill the edge with the jobs still queued.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        media
            .metric("edgecache_write_through_upload_errors_total{store=\"spaces\"}")
            .await
            >= 3.0
    );
    kill_and_restart(&mut media.pop).await;
    media.s3.resume().await;
    wait_jobs(&media, "done", 3.0).await;
    for n in [1000u64, 2000, 3000] {
        assert!(
            media.s3.get(&n.to_string()).await == Some(pattern_range(0..n)),
            "{n}"
        );
    }
    assert_eq!(
        media.origin.hits(),
        3,
        "the old server was asked once per object"
    );
    assert_eq!(
        media.metric("edgecache_write_through_queue_jobs").await,
        0.0
    );
}

#[tokio::test]
async fn a_full_queue_drops_the_copy_not_the_request() {
    let mut media = media_pop_with(config(&[("max_jobs", "1"), ("retry_min", "1s")])).await;
    media.s3.stop();
    let http = media.pop.setup.http();
    for n in [1000u64, 2000] {
        let answer = get(http, &format!("/system/{n}"), &[]).await;
        assert_eq!(answer.status, 200);
        assert!(answer.body == pattern_range(0..n));
    }
    assert_eq!(
        media
            .metric("edgecache_write_through_jobs_total{event=\"dropped\"}")
            .await,
        1.0
    );
    media.s3.resume().await;
    wait_jobs(&media, "done", 1.0).await;
    assert!(media.s3.get("1000").await == Some(pattern_range(0..1000)));
    assert_eq!(media.s3.get("2000").await, None);
}

#[tokio::test]
async fn large_objects_are_uploaded_in_verified_parts() {
    let media = media_pop_with(MediaConfig {
        spaces: &[("multipart_threshold", "5MiB"), ("part_size", "5MiB")],
        ..config(QUEUE)
    })
    .await;
    let size = 12 * 1024 * 1024 + 5;
    let answer = get(media.pop.setup.http(), &format!("/system/{size}"), &[]).await;
    assert!(answer.body == pattern_range(0..size));
    wait_jobs(&media, "done", 1.0).await;
    assert!(media.s3.get(&size.to_string()).await == Some(pattern_range(0..size)));
    // Three parts: S3's multipart ETag ends in the part count.
    let head = media
        .s3
        .client()
        .head_object()
        .bucket(crate::harness::s3::BUCKET)
        .key(size.to_string())
        .send()
        .await
        .expect("head");
    assert!(
        head.e_tag()
            .is_some_and(|e| e.trim_matches('"').ends_with("-3")),
        "{:?}",
        head.e_tag()
    );
    assert_eq!(
        media
            .metric("edgecache_write_through_uploaded_bytes_total{store=\"spaces\"}")
            .await,
        size as f64
    );
}

#[tokio::test]
async fn every_write_through_store_that_lacks_the_object_gets_it() {
    let backup = crate::harness::s3::S3Server::start().await;
    let credentials_dir = tempfile::tempdir().expect("tempdir");
    let backup_store = backup.store("backup", credentials_dir.path());
    let media = media_pop_with(MediaConfig {
        chain: &["spaces", "backup", "old"],
        write_through: &["spaces", "backup"],
        queue: Some(QUEUE),
        change: &|config, _| {
            config
                .stores
                .insert("backup".to_string(), backup_store.clone());
        },
        ..MediaConfig::default()
    })
    .await;
    // Only in the first store: the second gets a copy.
    media.s3.put("in-spaces.png", b"first store only").await;
    let answer = get(media.pop.setup.http(), "/system/in-spaces.png", &[]).await;
    assert_eq!(answer.body, b"first store only");
    // Only on the old server: both get a copy.
    let answer = get(media.pop.setup.http(), "/system/4096", &[]).await;
    assert!(answer.body == pattern_range(0..4096));
    wait_jobs(&media, "done", 2.0).await;
    assert_eq!(
        backup.get("in-spaces.png").await.as_deref(),
        Some(&b"first store only"[..])
    );
    assert!(media.s3.get("4096").await == Some(pattern_range(0..4096)));
    assert!(backup.get("4096").await == Some(pattern_range(0..4096)));
}

#[tokio::test]
async fn a_job_that_keeps_failing_is_set_aside_after_max_attempts() {
    let mut media = media_pop_with(config(&[
        ("retry_min", "50ms"),
        ("retry_max", "50ms"),
        ("max_attempts", "2"),
    ]))
    .await;
    media.s3.stop();
    let answer = get(media.pop.setup.http(), "/system/777", &[]).await;
    assert_eq!(answer.status, 200);
    wait_jobs(&media, "failed", 1.0).await;
    let failed = media.pop.cache_dir.path().join("queue/failed");
    let names: Vec<String> = std::fs::read_dir(&failed)
        .expect("failed dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "the job and its body are kept: {names:?}");
    let body = names.iter().find(|n| n.ends_with(".body")).expect("body");
    assert!(std::fs::read(failed.join(body)).expect("read") == pattern_range(0..777));
    media.s3.resume().await;
    assert_eq!(media.s3.get("777").await, None);
}

/// The `.body` files under `dir` with their (inode, link count).
fn body_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "body"))
                .map(|p| {
                    let meta = std::fs::metadata(&p).expect("metadata");
                    (p, meta.ino(), meta.nlink())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_body_the_cache_keeps_on_disk_is_written_once_and_is_the_copy() {
    let mut media = media_pop_with(config(QUEUE)).await;
    // The store is away, so the job waits and its file can be looked at.
    media.s3.stop();
    let http = media.pop.setup.http();
    let answer = get(http, "/system/300000", &[]).await;
    assert_eq!((answer.status, answer.cache_status()), (200, "MISS"));
    assert!(answer.body == pattern_range(0..300_000));
    wait_jobs(&media, "queued", 1.0).await;

    let jobs = body_files(&media.pop.cache_dir.path().join("queue/jobs"));
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (_, job_inode, links) = jobs[0];
    assert_eq!(links, 2, "the job's body has a second name");
    use std::os::unix::fs::MetadataExt;
    let cached: Vec<u64> = entry_files(&media.pop, "body")
        .iter()
        .map(|p| std::fs::metadata(p).expect("metadata").ino())
        .collect();
    assert!(
        cached.contains(&job_inode),
        "the job's body is the cache's file: {job_inode} not in {cached:?}"
    );
    let copied =
        |source: &str| format!("edgecache_write_through_copied_bytes_total{{source=\"{source}\"}}");
    assert_eq!(media.metric(&copied("cache")).await, 300_000.0);
    assert_eq!(media.metric(&copied("stream")).await, 0.0);

    // What goes up is the object, not the cache's file with its header.
    media.s3.resume().await;
    wait_jobs(&media, "done", 1.0).await;
    assert!(media.s3.get("300000").await == Some(pattern_range(0..300_000)));
    assert!(body_files(&media.pop.cache_dir.path().join("queue/jobs")).is_empty());
    // The cache's copy is untouched by the job's end.
    let again = get(http, "/system/300000", &[]).await;
    assert_eq!(again.cache_status(), "HIT");
    assert!(again.body == pattern_range(0..300_000));
    assert_eq!(media.origin.hits_for("/bytes/300000"), 1);
}

#[tokio::test]
async fn a_body_the_cache_does_not_keep_is_copied_as_it_streams() {
    let media = media_pop_with(MediaConfig {
        change: &|config, _| {
            config.route("/system/").cache = Some(false);
        },
        ..config(QUEUE)
    })
    .await;
    let answer = get(media.pop.setup.http(), "/system/5000", &[]).await;
    assert_eq!(answer.status, 200);
    wait_jobs(&media, "done", 1.0).await;
    assert!(media.s3.get("5000").await == Some(pattern_range(0..5000)));
    let copied =
        |source: &str| format!("edgecache_write_through_copied_bytes_total{{source=\"{source}\"}}");
    assert_eq!(media.metric(&copied("stream")).await, 5000.0);
    assert_eq!(media.metric(&copied("cache")).await, 0.0);
    assert!(entry_files(&media.pop, "body").is_empty());
}

#[tokio::test]
async fn a_legacy_video_served_in_slices_is_copied_whole_once_in_the_background() {
    let media = media_pop_with(config(QUEUE)).await;
    let http = media.pop.setup.http();
    let size = 5_000_000u64;
    let path = format!("/system/{size}");
    let object = format!("/bytes/{size}");
    // The player's probe and a seek: two slices from the old server, at once.
    let probe = get(http, &path, &[("Range", "bytes=0-1")]).await;
    assert_eq!(probe.status, 206);
    assert_eq!(probe.header("content-range"), format!("bytes 0-1/{size}"));
    let seek = get(http, &path, &[("Range", "bytes=3000000-3000099")]).await;
    assert!(seek.body == pattern_range(3_000_000..3_000_100));
    // The copy: one whole fetch of its own, however many slices were served.
    wait_jobs(&media, "done", 1.0).await;
    assert!(media.s3.get(&size.to_string()).await == Some(pattern_range(0..size)));
    let asked = media.origin.ranges_for(&object);
    assert_eq!(
        asked.iter().filter(|range| range.is_empty()).count(),
        1,
        "{asked:?}"
    );
    assert_eq!(asked.len(), 3, "{asked:?}");
    // Slices not yet stored now come from the store, not the old server.
    let later = get(http, &path, &[("Range", "bytes=4500000-4500009")]).await;
    assert!(later.body == pattern_range(4_500_000..4_500_010));
    assert_eq!(media.origin.ranges_for(&object).len(), 3);
}
