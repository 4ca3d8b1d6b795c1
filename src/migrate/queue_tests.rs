//! The write-through queue and its tee against a real directory: a whole body becomes one
//! job, a broken or abandoned one leaves nothing, the bounds refuse copies past them and
//! get their room back, jobs survive a reopen, and the service puts a job into a
//! `directory` store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use pingora::services::background::BackgroundService;

use super::queue::{NewJob, WriteThroughQueue, WriteThroughService};
use super::tee::{tee_body, Tee};
use crate::config::model::{BreakerSettings, StoreKind, StoreSettings, WriteThroughSettings};
use crate::store::places::Places;
use crate::store::{BodyStream, ObjectInfo, ObjectKey, Tombstones};

const STORE: &str = "disk";

fn settings(queue_dir: &Path, max_jobs: usize, max_bytes: u64) -> WriteThroughSettings {
    WriteThroughSettings {
        queue_dir: queue_dir.to_path_buf(),
        max_jobs,
        max_bytes,
        max_object_size: 1 << 20,
        workers: 1,
        retry_min: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        max_attempts: 0,
    }
}

/// No store configured: jobs queue up and nothing takes them.
fn no_places() -> Arc<Places> {
    Arc::new(Places::build(&BTreeMap::new()).expect("no stores"))
}

/// One `directory` store named `STORE`, at `path`.
fn directory_store(path: &Path) -> Arc<Places> {
    let stores = BTreeMap::from([(
        STORE.to_string(),
        StoreSettings {
            name: STORE.to_string(),
            kind: StoreKind::Directory {
                path: path.to_path_buf(),
            },
            timeout: Duration::from_secs(5),
            max_concurrency: 4,
            breaker: BreakerSettings {
                failures: 0,
                cooldown: Duration::from_secs(1),
                first_probe_after: Duration::from_secs(1),
            },
        },
    )]);
    Arc::new(Places::build(&stores).expect("places"))
}

fn open(settings: &WriteThroughSettings, places: Arc<Places>) -> Arc<WriteThroughQueue> {
    WriteThroughQueue::open(settings, places, Arc::new(Tombstones::memory_only()))
        .expect("queue opens")
}

fn job(key: &str, len: usize) -> NewJob {
    NewJob {
        key: ObjectKey::new(key.to_string()).expect("valid key"),
        stores: vec![STORE.to_string()],
        info: ObjectInfo {
            len: len as u64,
            content_type: Some("image/png".to_string()),
            etag: None,
            last_modified: None,
        },
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

/// A body as the media origin hands it on: chunks, then perhaps an error. Fewer chunks
/// than the tee's channel holds, so the copy never falls behind in a test.
fn stream(chunks: Vec<Bytes>, error_at_end: bool) -> BodyStream {
    let mut items: Vec<std::io::Result<Bytes>> = chunks.into_iter().map(Ok).collect();
    if error_at_end {
        items.push(Err(std::io::Error::other("the place broke off")));
    }
    Box::pin(futures_util::stream::iter(items))
}

fn chunks_of(body: &[u8]) -> Vec<Bytes> {
    body.chunks(body.len().div_ceil(8).max(1))
        .map(Bytes::copy_from_slice)
        .collect()
}

/// What the client receives through the tee: every chunk, and whether it ended in an error.
async fn serve(body: BodyStream, tee: Tee) -> (Vec<u8>, bool) {
    let items: Vec<std::io::Result<Bytes>> = tee_body(body, tee).collect().await;
    let mut got = Vec::new();
    let mut failed = false;
    for item in items {
        match item {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(_) => failed = true,
        }
    }
    (got, failed)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// The copies still arriving: this process's folder under `incoming/`.
fn incoming(queue_dir: &Path) -> Vec<PathBuf> {
    files_in(
        &queue_dir
            .join("incoming")
            .join(std::process::id().to_string()),
    )
}

fn jobs(queue_dir: &Path) -> Vec<PathBuf> {
    files_in(&queue_dir.join("jobs"))
}

/// The copy is written and queued on the blocking pool after the client's stream ends:
/// waits (bounded) for `done` to hold.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting: {what}");
}

/// A new copy of `key`, once the queue has room for it: copies dropped a moment ago give
/// their room back on the blocking pool, not at once.
async fn begin_when_room(queue: &Arc<WriteThroughQueue>, key: &str, len: usize) -> Tee {
    let mut tee = None;
    wait_until(&format!("room for {key}"), || {
        tee = tee.take().or_else(|| queue.begin(job(key, len)));
        tee.is_some()
    })
    .await;
    tee.expect("waited for it")
}

/// Waits (bounded) until the queue has room for `key` again, and gives the room back.
async fn wait_for_room(queue: &Arc<WriteThroughQueue>, key: &str, len: usize) {
    // Never fed: the copy is dropped at once.
    drop(begin_when_room(queue, key, len).await);
}

/// Streams a whole body through a new copy and waits for its job.
async fn queue_whole(queue: &Arc<WriteThroughQueue>, queue_dir: &Path, key: &str, body: &[u8]) {
    let before = jobs(queue_dir).len();
    let tee = begin_when_room(queue, key, body.len()).await;
    let (got, failed) = serve(stream(chunks_of(body), false), tee).await;
    assert!(!failed);
    assert_eq!(got, body, "the client's body");
    wait_until("the job is written", || jobs(queue_dir).len() == before + 2).await;
}

#[tokio::test]
async fn a_whole_body_through_the_tee_becomes_exactly_one_job_and_its_body() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 10, 1 << 20), no_places());
    let body = data(100_000, 1);
    queue_whole(&queue, dir.path(), "media/whole.png", &body).await;

    let files = jobs(dir.path());
    let [body_file, job_file] = files.as_slice() else {
        panic!("expected one .body and one .job, found {files:?}");
    };
    assert_eq!(body_file.extension().and_then(|e| e.to_str()), Some("body"));
    assert_eq!(job_file, &body_file.with_extension("job"));
    assert_eq!(std::fs::read(body_file).expect("body"), body);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_file).expect("job")).expect("job is JSON");
    assert_eq!(record["key"], "media/whole.png");
    assert_eq!(record["len"], 100_000);
    assert_eq!(record["stores"], serde_json::json!([STORE]));
    assert_eq!(record["md5"], hex::encode(Md5::digest(&body)));
    assert!(
        incoming(dir.path()).is_empty(),
        "{:?}",
        incoming(dir.path())
    );
    // One copy of an object at a time: it is queued, so another is not started.
    assert!(queue.begin(job("media/whole.png", body.len())).is_none());
}

/// A copy that does not complete: no job, no file left in `incoming/`, its room given back.
async fn assert_leaves_nothing(queue: &Arc<WriteThroughQueue>, queue_dir: &Path, key: &str) {
    wait_until("the incomplete copy is removed", || {
        incoming(queue_dir).is_empty()
    })
    .await;
    wait_for_room(queue, key, 1000).await;
    wait_until("the probe copy is removed", || {
        incoming(queue_dir).is_empty()
    })
    .await;
    assert!(jobs(queue_dir).is_empty(), "{:?}", jobs(queue_dir));
}

#[tokio::test]
async fn a_body_that_errors_leaves_no_job_and_no_incoming_file() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 10, 1 << 20), no_places());
    let body = data(50_000, 2);
    let tee = queue
        .begin(job("media/error.png", body.len()))
        .expect("room");
    assert_eq!(
        incoming(dir.path()).len(),
        1,
        "the copy starts in incoming/"
    );
    let half = chunks_of(&body[..25_000]);
    let (got, failed) = serve(stream(half, true), tee).await;
    assert!(failed, "the client sees the error");
    assert_eq!(got, &body[..25_000]);
    assert_leaves_nothing(&queue, dir.path(), "media/error.png").await;
}

#[tokio::test]
async fn a_body_that_ends_short_leaves_no_job_and_no_incoming_file() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 10, 1 << 20), no_places());
    let body = data(50_000, 3);
    let tee = queue
        .begin(job("media/short.png", body.len()))
        .expect("room");
    let (got, failed) = serve(stream(chunks_of(&body[..49_999]), false), tee).await;
    assert!(!failed);
    assert_eq!(got.len(), 49_999);
    assert_leaves_nothing(&queue, dir.path(), "media/short.png").await;
}

#[tokio::test]
async fn a_client_that_goes_away_mid_body_leaves_no_job_and_no_incoming_file() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 10, 1 << 20), no_places());
    let body = data(50_000, 4);
    let tee = queue
        .begin(job("media/gone.png", body.len()))
        .expect("room");
    let mut served = tee_body(stream(chunks_of(&body), false), tee);
    let first = served.next().await.expect("a chunk").expect("not an error");
    assert!(!first.is_empty());
    drop(served);
    assert_leaves_nothing(&queue, dir.path(), "media/gone.png").await;
}

#[tokio::test]
async fn begin_is_refused_past_max_jobs_and_a_dropped_copy_gives_its_room_back() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 2, 1 << 20), no_places());
    let a = queue.begin(job("media/a.png", 100)).expect("room for a");
    let b = queue.begin(job("media/b.png", 100)).expect("room for b");
    assert!(
        queue.begin(job("media/c.png", 100)).is_none(),
        "a third job"
    );
    // The same object twice is refused whatever the room.
    drop(b);
    wait_for_room(&queue, "media/b.png", 100).await;
    assert!(
        queue.begin(job("media/a.png", 100)).is_none(),
        "a second copy of a"
    );
    drop(a);
    wait_for_room(&queue, "media/c.png", 100).await;

    // A queued job keeps its room until it is done.
    queue_whole(&queue, dir.path(), "media/d.png", &data(100, 5)).await;
    queue_whole(&queue, dir.path(), "media/e.png", &data(100, 6)).await;
    assert!(
        queue.begin(job("media/f.png", 100)).is_none(),
        "past two queued jobs"
    );
}

#[tokio::test]
async fn begin_is_refused_past_max_bytes_and_a_dropped_copy_gives_its_bytes_back() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 10, 1000), no_places());
    let a = queue.begin(job("media/a.png", 600)).expect("room for a");
    assert!(
        queue.begin(job("media/b.png", 500)).is_none(),
        "1100 bytes held"
    );
    let b = queue
        .begin(job("media/b.png", 400))
        .expect("exactly 1000 bytes");
    assert!(
        queue.begin(job("media/c.png", 1)).is_none(),
        "1001 bytes held"
    );
    drop(a);
    wait_for_room(&queue, "media/c.png", 600).await;
    drop(b);
    // Larger than any copy may be: refused even in an empty queue.
    assert!(queue.begin(job("media/huge.png", 2 << 20)).is_none());
    // Without a store to go to there is nothing to copy.
    let mut nowhere = job("media/nowhere.png", 10);
    nowhere.stores.clear();
    assert!(queue.begin(nowhere).is_none());
    wait_for_room(&queue, "media/b.png", 1000).await;
}

#[tokio::test]
async fn queued_jobs_survive_a_reopen_and_leftovers_are_cleared() {
    let dir = tempfile::tempdir().expect("dir");
    let body = data(30_000, 7);
    {
        let queue = open(&settings(dir.path(), 1, 1 << 20), no_places());
        queue_whole(&queue, dir.path(), "media/kept.png", &body).await;
    }
    let queued = jobs(dir.path());
    // What a process stopped mid-copy leaves: a copy in its incoming folder, and a body in
    // jobs/ whose job file was never written.
    let dead = dir.path().join("incoming/4194305");
    std::fs::create_dir_all(&dead).expect("incoming of a dead process");
    std::fs::write(dead.join("1.body"), b"half").expect("half a copy");
    std::fs::write(dir.path().join("jobs/5.body"), b"no job").expect("orphan body");

    let queue = open(&settings(dir.path(), 1, 1 << 20), no_places());
    assert_eq!(
        jobs(dir.path()),
        queued,
        "the queued job, and only it, is kept"
    );
    assert!(!dead.exists(), "a dead process's copies were left");
    // The recovered job holds its key and its room.
    assert!(queue.begin(job("media/kept.png", body.len())).is_none());
    assert!(
        queue.begin(job("media/other.png", 10)).is_none(),
        "max_jobs is 1"
    );
}

#[tokio::test]
async fn the_service_puts_queued_and_recovered_jobs_into_a_directory_store() {
    let dir = tempfile::tempdir().expect("dir");
    let (queue_dir, store_dir) = (dir.path().join("queue"), dir.path().join("store"));
    std::fs::create_dir_all(&store_dir).expect("store dir");
    let recovered = data(40_000, 8);
    {
        // Queued by an earlier process, with no store configured then.
        let queue = open(&settings(&queue_dir, 10, 1 << 20), no_places());
        queue_whole(&queue, &queue_dir, "media/earlier.png", &recovered).await;
    }
    let queue = open(
        &settings(&queue_dir, 10, 1 << 20),
        directory_store(&store_dir),
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let service = WriteThroughService {
        queue: queue.clone(),
    };
    let running = tokio::spawn(async move { service.start(shutdown).await });

    let fresh = data(70_000, 9);
    let tee = queue
        .begin(job("media/new/fresh.png", fresh.len()))
        .expect("room");
    let (got, _) = serve(stream(chunks_of(&fresh), false), tee).await;
    assert_eq!(got, fresh);
    wait_until("both jobs are done", || {
        store_dir.join("media/new/fresh.png").exists()
            && store_dir.join("media/earlier.png").exists()
            && jobs(&queue_dir).is_empty()
    })
    .await;
    assert_eq!(
        std::fs::read(store_dir.join("media/earlier.png")).expect("stored"),
        recovered
    );
    assert_eq!(
        std::fs::read(store_dir.join("media/new/fresh.png")).expect("stored"),
        fresh
    );
    // Done jobs give their room back.
    wait_for_room(&queue, "media/new/fresh.png", fresh.len()).await;
    stop.send(true).expect("service listening");
    running.await.expect("service stops");
}

/// A file like the cache's: a header of `header` bytes, then `body`.
fn cache_like_file(dir: &Path, header: usize, body: &[u8]) -> PathBuf {
    let path = dir.join("cache-body");
    let mut bytes = vec![0xEE; header];
    bytes.extend_from_slice(body);
    std::fs::write(&path, bytes).expect("cache file");
    path
}

#[tokio::test]
async fn a_copy_linked_from_a_file_with_a_header_is_the_body_after_it() {
    let dir = tempfile::tempdir().expect("dir");
    let (queue_dir, store_dir) = (dir.path().join("queue"), dir.path().join("store"));
    std::fs::create_dir_all(&store_dir).expect("store dir");
    let queue = open(
        &settings(&queue_dir, 10, 1 << 20),
        directory_store(&store_dir),
    );
    let body = data(50_000, 10);
    let cached = cache_like_file(dir.path(), 16, &body);
    let copy = queue
        .reserve(job("media/linked.png", body.len()))
        .expect("room")
        .linked();
    let destination = copy.destination().expect("a place").to_path_buf();
    std::fs::hard_link(&cached, &destination).expect("link");
    copy.adopt(16);
    wait_until("the job is written", || jobs(&queue_dir).len() == 2).await;
    let job_file = jobs(&queue_dir)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "job"))
        .expect("job file");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&job_file).expect("job")).expect("JSON");
    assert_eq!(record["offset"], 16);
    assert_eq!(record["md5"], hex::encode(Md5::digest(&body)));
    // One file, two names: nothing was written for the copy.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&cached).expect("meta").nlink(), 2);

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let service = WriteThroughService {
        queue: queue.clone(),
    };
    let running = tokio::spawn(async move { service.start(shutdown).await });
    wait_until("the job is done", || jobs(&queue_dir).is_empty()).await;
    assert_eq!(
        std::fs::read(store_dir.join("media/linked.png")).expect("stored"),
        body
    );
    // The cache's file is its own again, whole.
    assert_eq!(std::fs::metadata(&cached).expect("meta").nlink(), 1);
    assert_eq!(
        std::fs::read(&cached).expect("cache file").len(),
        16 + body.len()
    );
    stop.send(true).expect("service listening");
    running.await.expect("service stops");
}

#[tokio::test]
async fn a_linked_file_of_the_wrong_length_is_not_queued_and_gives_its_room_back() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 1, 1 << 20), no_places());
    let body = data(10_000, 11);
    let cached = cache_like_file(dir.path(), 16, &body[..9_000]);
    let copy = queue
        .reserve(job("media/short.png", body.len()))
        .expect("room")
        .linked();
    std::fs::hard_link(&cached, copy.destination().expect("a place")).expect("link");
    copy.adopt(16);
    wait_until("the copy is removed", || incoming(dir.path()).is_empty()).await;
    assert!(jobs(dir.path()).is_empty());
    // max_jobs is 1: the room came back.
    wait_for_room(&queue, "media/short.png", body.len()).await;
}

#[tokio::test]
async fn a_linked_copy_dropped_unadopted_leaves_nothing_and_gives_its_room_back() {
    let dir = tempfile::tempdir().expect("dir");
    let queue = open(&settings(dir.path(), 1, 1 << 20), no_places());
    let cached = cache_like_file(dir.path(), 16, &data(1000, 12));
    let copy = queue
        .reserve(job("media/dropped.png", 1000))
        .expect("room")
        .linked();
    // Linked, but the request ended before it was adopted.
    std::fs::hard_link(&cached, copy.destination().expect("a place")).expect("link");
    drop(copy);
    assert!(incoming(dir.path()).is_empty());
    assert!(queue.reserve(job("media/other.png", 1000)).is_some());
    // The cache's file is left as it was.
    assert_eq!(std::fs::read(&cached).expect("cache file").len(), 1016);
}
