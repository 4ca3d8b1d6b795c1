//! `TieredStorage` driven only through pingora's `Storage`, `HandleMiss` and `HandleHit`
//! traits (plus its URL, prefix and tag purges), the way the proxy drives it: complete fills
//! become hits in the right tier, readers tail a fill as it arrives, a purge during a fill
//! or a fill that breaks off leaves nothing stored, and no reader ever gets a short body.
//! Eviction, damaged files and racing purges are in `storage_disk_tests.rs`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{HitHandler, MissHandler, PurgeTarget, PurgeType};
use pingora::cache::trace::{Span, SpanHandle};
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;

use super::disk::DiskTier;
use super::disk_files::BLOCK_SIZE;
use super::hit::TieredHit;
use super::memory::MemoryTier;
use super::storage::TieredStorage;
use super::tags::Tags;
use super::EdgeCache;
use crate::config::model::DiskTierSettings;

/// Bodies up to this size go to the memory tier as well; larger ones only to disk.
pub(super) const MEMORY_MAX_OBJECT: u64 = 64 * 1024;
pub(super) const SITE: &str = "https://example.social";

/// A storage with a disk tier, and the directory that tier lives in.
pub(super) struct Cache {
    pub(super) storage: &'static TieredStorage,
    pub(super) dir: tempfile::TempDir,
}

fn disk_settings(dir: &Path, max_size: u64) -> DiskTierSettings {
    DiskTierSettings {
        path: dir.join("cache"),
        max_size,
        max_object_size: 16 << 20,
        max_entries: 10_000,
    }
}

/// pingora's `Storage` wants `&'static self`; one leaked storage per test is cheap.
fn leak(disk: Option<DiskTier>) -> &'static TieredStorage {
    let memory = MemoryTier::new(16 << 20, MEMORY_MAX_OBJECT);
    Box::leak(Box::new(TieredStorage::new(memory, disk)))
}

pub(super) fn with_disk(max_size: u64) -> Cache {
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = DiskTier::open(&disk_settings(dir.path(), max_size)).expect("disk tier opens");
    Cache {
        storage: leak(Some(disk)),
        dir,
    }
}

/// A second storage over the same directory, its memory tier empty: what a restart sees.
pub(super) fn reopen(cache: &Cache, max_size: u64) -> &'static TieredStorage {
    let disk =
        DiskTier::open(&disk_settings(cache.dir.path(), max_size)).expect("disk tier reopens");
    leak(Some(disk))
}

pub(super) fn span() -> SpanHandle {
    Span::inactive().handle()
}

/// The key of `SITE` + `path`, made the way the proxy makes it.
pub(super) fn key(path: &str) -> CacheKey {
    EdgeCache::key(&format!("{SITE}{path}"))
}

/// A fresh 200 stating `len` as its `Content-Length`.
pub(super) fn meta(len: usize) -> CacheMeta {
    let mut header = ResponseHeader::build(200, None).expect("status");
    header
        .insert_header("Content-Length", len.to_string())
        .expect("length header");
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
}

/// `len` bytes that differ from their neighbours and from another `seed`'s, so a byte
/// read from the wrong offset or the wrong object shows.
pub(super) fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8) ^ seed)
        .collect()
}

/// The tag every test object carries: its own path, so a purge of it removes that object
/// alone (on `SITE`'s host).
pub(super) fn own_tag(key: &CacheKey) -> String {
    let url = key.primary_key_str().expect("key has its URL");
    format!("path:{}", &url[SITE.len()..])
}

/// [`meta`] with the object's own tag, as the proxy's meta carries its tags.
pub(super) fn tagged_meta(key: &CacheKey, len: usize) -> CacheMeta {
    let mut meta = meta(len);
    let tags = Tags::new([own_tag(key), "every-object".to_string()]).expect("valid tags");
    meta.extensions_mut().insert(tags);
    meta
}

pub(super) async fn begin(
    storage: &'static TieredStorage,
    key: &CacheKey,
    len: usize,
) -> MissHandler {
    storage
        .get_miss_handler(key, &tagged_meta(key, len), &span())
        .await
        .expect("miss handler")
}

/// Stores `data` as one fill, in chunks smaller than a block.
pub(super) async fn store(storage: &'static TieredStorage, key: &CacheKey, data: &[u8]) {
    let mut writer = begin(storage, key, data.len()).await;
    for chunk in data.chunks(100_000) {
        writer
            .write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .expect("body written");
    }
    writer.finish().await.expect("fill finished");
}

pub(super) async fn lookup(
    storage: &'static TieredStorage,
    key: &CacheKey,
) -> Option<(CacheMeta, HitHandler)> {
    storage.lookup(key, &span()).await.expect("lookup")
}

pub(super) async fn read_to_end(hit: &mut HitHandler) -> pingora::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = hit.read_body().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads until `want` bytes in all have been read (all of them already written).
async fn read_up_to(hit: &mut HitHandler, got: &mut Vec<u8>, want: usize) {
    while got.len() < want {
        let chunk = hit
            .read_body()
            .await
            .expect("read")
            .expect("bytes already written are there to read");
        got.extend_from_slice(&chunk);
    }
}

pub(super) fn tier_of(hit: &HitHandler) -> &'static str {
    match hit.as_any().downcast_ref::<TieredHit>() {
        Some(TieredHit::Memory(_)) => "memory",
        Some(TieredHit::Disk(_)) => "disk",
        Some(TieredHit::Partial(_)) => "fill",
        None => "foreign",
    }
}

/// Asserts neither tier holds `key`, asking each tier directly as well as through lookup.
pub(super) async fn assert_stored_nowhere(storage: &'static TieredStorage, key: &CacheKey) {
    let combined = key.combined_bin();
    assert!(
        lookup(storage, key).await.is_none(),
        "lookup still finds it"
    );
    assert!(
        storage.memory.get(&combined).is_none(),
        "memory tier holds it"
    );
    if let Some(disk) = &storage.disk {
        assert!(disk.lookup(&combined).is_none(), "disk tier holds it");
    }
}

/// Every file under `dir` and its subdirectories.
pub(super) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Files left in the disk tier's spool (bodies still arriving, meta files being written).
pub(super) fn spool_files(cache: &Cache) -> Vec<PathBuf> {
    files_under(&cache.dir.path().join("cache/v1/tmp"))
}

/// Committed entry files (meta and body), and the bytes the filesystem allocated for them.
pub(super) fn entry_files(cache: &Cache) -> (Vec<PathBuf>, u64) {
    let root = cache.dir.path().join("cache/v1");
    let files: Vec<PathBuf> = files_under(&root)
        .into_iter()
        .filter(|p| !p.starts_with(root.join("tmp")))
        .collect();
    let bytes = files
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.blocks() * 512))
        .sum();
    (files, bytes)
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Purge {
    Object,
    Url,
    Prefix,
    Tag,
}

/// Purges `key` the way the admin API (`Url`, `Prefix`, `Tag`) or pingora (`Object`)
/// would.
pub(super) async fn purge(storage: &'static TieredStorage, key: &CacheKey, how: Purge) {
    match how {
        Purge::Object => {
            storage
                .purge(
                    PurgeTarget::Active(&key.to_compact()),
                    PurgeType::Invalidation,
                    &span(),
                )
                .await
                .expect("purge");
        }
        Purge::Url => {
            storage.purge_url(&key.primary_bin());
        }
        Purge::Prefix => {
            let url = key.primary_key_str().expect("key has its URL");
            let folder = &url[..=url.rfind('/').expect("URL has a path")];
            storage.purge_prefix(folder);
        }
        Purge::Tag => {
            storage.purge_tag(&own_tag(key), Some("example.social"));
        }
    }
}

#[tokio::test]
async fn a_small_complete_fill_is_a_memory_hit_with_the_same_bytes() {
    let cache = with_disk(64 << 20);
    let key = key("/media/small.png");
    let data = body(10_000, 1);
    store(cache.storage, &key, &data).await;

    let (meta, mut hit) = lookup(cache.storage, &key).await.expect("a hit");
    assert_eq!(tier_of(&hit), "memory");
    assert_eq!(
        crate::wire::content_length(&meta.response_header().headers),
        Some(10_000)
    );
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);
    // A range of it, as pingora asks for one (end exclusive).
    hit.seek(100, Some(200)).expect("seek");
    assert_eq!(read_to_end(&mut hit).await.expect("range"), &data[100..200]);
    // The disk tier has its copy too, for after a restart.
    let disk = cache.storage.disk.as_ref().expect("disk tier");
    assert!(disk.lookup(&key.combined_bin()).is_some());
    assert!(spool_files(&cache).is_empty(), "{:?}", spool_files(&cache));
}

#[tokio::test]
async fn a_fill_larger_than_the_memory_tier_takes_is_a_disk_hit_with_the_same_bytes() {
    let cache = with_disk(64 << 20);
    let key = key("/media/large.mp4");
    let data = body(2 * BLOCK_SIZE + 12_345, 2);
    store(cache.storage, &key, &data).await;

    assert!(cache.storage.memory.get(&key.combined_bin()).is_none());
    let (_, mut hit) = lookup(cache.storage, &key).await.expect("a hit");
    assert_eq!(tier_of(&hit), "disk");
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);
    // A range across the first block boundary.
    let (start, end) = (BLOCK_SIZE - 10, BLOCK_SIZE + 10);
    hit.seek(start, Some(end)).expect("seek");
    assert_eq!(
        read_to_end(&mut hit).await.expect("range"),
        &data[start..end]
    );
    // A restart finds the same entry.
    let reopened = reopen(&cache, 64 << 20);
    let (_, mut hit) = lookup(reopened, &key).await.expect("a hit after reopening");
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);
}

#[tokio::test]
async fn without_a_disk_tier_small_fills_are_kept_and_large_ones_refused() {
    let storage = leak(None);
    let small = key("/media/small.png");
    let data = body(5_000, 3);
    store(storage, &small, &data).await;
    let (_, mut hit) = lookup(storage, &small).await.expect("a hit");
    assert_eq!(tier_of(&hit), "memory");
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);

    // With nowhere to spool it, a body the memory tier would not keep is not started.
    let large = key("/media/large.mp4");
    let refused = storage
        .get_miss_handler(&large, &meta(MEMORY_MAX_OBJECT as usize + 1), &span())
        .await;
    assert!(refused.is_err(), "a miss handler for a body no tier keeps");
}

#[tokio::test]
async fn a_reader_of_a_half_written_fill_gets_each_chunk_as_it_arrives() {
    let cache = with_disk(64 << 20);
    let key = key("/media/arriving.mp4");
    let data = body(3 * BLOCK_SIZE + 777, 4);
    let chunks: Vec<&[u8]> = data.chunks(150_000).collect();
    let mut writer = begin(cache.storage, &key, data.len()).await;
    writer
        .write_body(Bytes::copy_from_slice(chunks[0]), false)
        .await
        .expect("write");

    let (meta, mut hit) = lookup(cache.storage, &key)
        .await
        .expect("the fill is found");
    assert_eq!(tier_of(&hit), "fill");
    assert_eq!(
        crate::wire::content_length(&meta.response_header().headers),
        Some(data.len() as u64)
    );
    // A range reader past what has arrived waits for its bytes.
    let (_, mut ranged) = lookup(cache.storage, &key).await.expect("the fill again");
    assert!(ranged.can_seek(), "the fill's length is known");
    let (start, end) = (2 * BLOCK_SIZE - 5, 2 * BLOCK_SIZE + 5);
    ranged.seek(start, Some(end)).expect("seek");
    let ranged = tokio::spawn(async move { read_to_end(&mut ranged).await });

    let mut got = Vec::new();
    let mut written = chunks[0].len();
    for chunk in &chunks[1..] {
        read_up_to(&mut hit, &mut got, written).await;
        assert!(
            hit.read_body().now_or_never().is_none(),
            "a reader caught up with the fill must wait, not end at {written} bytes"
        );
        writer
            .write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .expect("write");
        written += chunk.len();
    }
    read_up_to(&mut hit, &mut got, written).await;
    writer.finish().await.expect("finish");
    assert!(hit.read_body().await.expect("end").is_none());
    assert_eq!(got, data);
    let ranged = ranged.await.expect("range reader").expect("range read");
    assert_eq!(ranged, &data[start..end]);
}

#[tokio::test]
async fn the_writers_streaming_tag_finds_its_own_fill_even_after_a_purge() {
    let cache = with_disk(64 << 20);
    let key = key("/media/tagged.png");
    let data = body(300_000, 5);
    let mut writer = begin(cache.storage, &key, data.len()).await;
    let tag = writer.streaming_write_tag().expect("a tag").to_vec();
    writer
        .write_body(Bytes::copy_from_slice(&data[..1000]), false)
        .await
        .expect("write");
    let (_, hit) = cache
        .storage
        .lookup_streaming_write(&key, Some(&tag), &span())
        .await
        .expect("lookup")
        .expect("the tagged fill");
    assert_eq!(tier_of(&hit), "fill");

    purge(cache.storage, &key, Purge::Object).await;
    // Others no longer see the purged fill, but the request writing it still reads it.
    assert!(lookup(cache.storage, &key).await.is_none());
    let (_, mut hit) = cache
        .storage
        .lookup_streaming_write(&key, Some(&tag), &span())
        .await
        .expect("lookup")
        .expect("the tagged fill, purged");
    writer
        .write_body(Bytes::copy_from_slice(&data[1000..]), true)
        .await
        .expect("write");
    writer.finish().await.expect("finish");
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);
    assert_stored_nowhere(cache.storage, &key).await;
}

/// A fill purged half way: the reader that was tailing it gets every byte, a request
/// arriving after the purge does not see it, and once finished nothing is stored.
async fn purge_during_fill(cache: &Cache, how: Purge, size: usize) {
    let key = key("/media/purged-while-arriving.png");
    let data = body(size, 6);
    let half = size / 2;
    let mut writer = begin(cache.storage, &key, size).await;
    writer
        .write_body(Bytes::copy_from_slice(&data[..half]), false)
        .await
        .expect("write");
    let (_, mut reader) = lookup(cache.storage, &key)
        .await
        .expect("the fill is found");
    let mut got = Vec::new();
    read_up_to(&mut reader, &mut got, half).await;

    purge(cache.storage, &key, how).await;
    assert!(
        lookup(cache.storage, &key).await.is_none(),
        "{how:?}: a purged fill is served to a new request"
    );
    writer
        .write_body(Bytes::copy_from_slice(&data[half..]), true)
        .await
        .expect("write");
    writer.finish().await.expect("finish");
    got.extend(read_to_end(&mut reader).await.expect("rest of the body"));
    assert_eq!(got, data, "{how:?}: the reader's body");
    assert_stored_nowhere(cache.storage, &key).await;
    assert!(spool_files(cache).is_empty(), "{:?}", spool_files(cache));
    assert!(
        entry_files(cache).0.is_empty(),
        "{:?}",
        entry_files(cache).0
    );
}

#[tokio::test]
async fn an_object_purge_during_a_fill_lets_its_reader_finish_and_stores_nothing() {
    let cache = with_disk(64 << 20);
    // Small enough for memory as well, and larger than memory takes.
    purge_during_fill(&cache, Purge::Object, 20_000).await;
    purge_during_fill(&cache, Purge::Object, BLOCK_SIZE + 100).await;
}

#[tokio::test]
async fn a_url_purge_during_a_fill_lets_its_reader_finish_and_stores_nothing() {
    let cache = with_disk(64 << 20);
    purge_during_fill(&cache, Purge::Url, 20_000).await;
    purge_during_fill(&cache, Purge::Url, BLOCK_SIZE + 100).await;
}

#[tokio::test]
async fn a_prefix_purge_during_a_fill_lets_its_reader_finish_and_stores_nothing() {
    let cache = with_disk(64 << 20);
    purge_during_fill(&cache, Purge::Prefix, 20_000).await;
    purge_during_fill(&cache, Purge::Prefix, BLOCK_SIZE + 100).await;
}

#[tokio::test]
async fn without_a_disk_tier_a_purge_during_a_fill_stores_nothing() {
    let storage = leak(None);
    let key = key("/media/memory-purged.png");
    let data = body(20_000, 7);
    let mut writer = begin(storage, &key, data.len()).await;
    writer
        .write_body(Bytes::copy_from_slice(&data[..5000]), false)
        .await
        .expect("write");
    let (_, mut reader) = lookup(storage, &key).await.expect("the fill is found");
    purge(storage, &key, Purge::Url).await;
    writer
        .write_body(Bytes::copy_from_slice(&data[5000..]), true)
        .await
        .expect("write");
    writer.finish().await.expect("finish");
    assert_eq!(read_to_end(&mut reader).await.expect("read"), data);
    assert_stored_nowhere(storage, &key).await;
}

#[derive(Clone, Copy, Debug)]
enum BreakOff {
    /// The writer is dropped without `finish` (the origin went away mid-body).
    Dropped,
    /// `finish` is called with fewer bytes than `Content-Length` said.
    Short,
}

/// A fill that breaks off half way, with a reader waiting on its next bytes.
async fn break_off_fill(storage: &'static TieredStorage, how: BreakOff) {
    let key = key("/media/broken-off.mp4");
    let data = body(BLOCK_SIZE + 5000, 8);
    let half = data.len() / 2;
    let mut writer = begin(storage, &key, data.len()).await;
    writer
        .write_body(Bytes::copy_from_slice(&data[..half]), false)
        .await
        .expect("write");
    let (_, mut reader) = lookup(storage, &key).await.expect("the fill is found");
    let mut got = Vec::new();
    read_up_to(&mut reader, &mut got, half).await;
    assert_eq!(got, &data[..half]);
    assert!(
        reader.read_body().now_or_never().is_none(),
        "the reader waits"
    );
    let waiting = tokio::spawn(async move { reader.read_body().await });

    match how {
        BreakOff::Dropped => drop(writer),
        BreakOff::Short => {
            let finished = writer.finish().await;
            assert!(finished.is_err(), "a short body finished as complete");
        }
    }
    let outcome = waiting.await.expect("reader task");
    assert!(
        outcome.is_err(),
        "{how:?}: the waiting reader got {outcome:?} instead of an error"
    );
    assert_stored_nowhere(storage, &key).await;
}

#[tokio::test]
async fn a_fill_dropped_half_way_fails_its_waiting_reader_and_leaves_nothing() {
    let cache = with_disk(64 << 20);
    break_off_fill(cache.storage, BreakOff::Dropped).await;
    assert!(spool_files(&cache).is_empty(), "{:?}", spool_files(&cache));
    assert!(entry_files(&cache).0.is_empty());
    let disk = cache.storage.disk.as_ref().expect("disk tier");
    assert_eq!(disk.index_for_tests().claimed(), 0, "reserved bytes kept");
}

#[tokio::test]
async fn a_fill_finished_short_of_its_length_fails_its_waiting_reader_and_leaves_nothing() {
    let cache = with_disk(64 << 20);
    break_off_fill(cache.storage, BreakOff::Short).await;
    assert!(spool_files(&cache).is_empty(), "{:?}", spool_files(&cache));
    assert!(entry_files(&cache).0.is_empty());
    let disk = cache.storage.disk.as_ref().expect("disk tier");
    assert_eq!(disk.index_for_tests().claimed(), 0, "reserved bytes kept");
}

#[tokio::test]
async fn without_a_disk_tier_a_broken_off_fill_fails_its_reader_and_leaves_nothing() {
    // Bodies the memory tier keeps: its own bound is smaller than the test's body.
    let storage = Box::leak(Box::new(TieredStorage::new(
        MemoryTier::new(16 << 20, 4 << 20),
        None,
    )));
    break_off_fill(storage, BreakOff::Dropped).await;
    break_off_fill(storage, BreakOff::Short).await;
}

#[tokio::test]
async fn a_body_longer_than_its_content_length_is_not_stored() {
    let cache = with_disk(64 << 20);
    let key = key("/media/too-long.png");
    let mut writer = begin(cache.storage, &key, 100).await;
    writer
        .write_body(Bytes::from(body(150, 9)), true)
        .await
        .expect("write");
    assert!(writer.finish().await.is_err());
    assert_stored_nowhere(cache.storage, &key).await;
    assert!(spool_files(&cache).is_empty(), "{:?}", spool_files(&cache));
}

#[tokio::test]
async fn update_meta_refreshes_both_tiers_and_keeps_the_body() {
    let cache = with_disk(64 << 20);
    let key = key("/media/refreshed.png");
    let data = body(8_000, 10);
    store(cache.storage, &key, &data).await;

    let mut refreshed = meta(data.len());
    refreshed
        .response_header_mut()
        .insert_header("X-Refreshed", "yes")
        .expect("header");
    let updated = cache
        .storage
        .update_meta(&key, &refreshed, &span())
        .await
        .expect("update");
    assert!(updated, "the stored object was not found to update");
    let refreshed_header = |meta: &CacheMeta| {
        meta.response_header()
            .headers
            .get("x-refreshed")
            .map(|v| v.as_bytes().to_vec())
    };
    let (meta, mut hit) = lookup(cache.storage, &key).await.expect("a hit");
    assert_eq!(refreshed_header(&meta), Some(b"yes".to_vec()));
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);
    // The disk copy was rewritten as well: after a restart it is promoted with the new meta.
    let reopened = reopen(&cache, 64 << 20);
    let (meta, mut hit) = lookup(reopened, &key).await.expect("a hit after reopening");
    assert_eq!(refreshed_header(&meta), Some(b"yes".to_vec()));
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);

    let absent = self::key("/media/never-stored.png");
    let updated = reopened
        .update_meta(&absent, &refreshed, &span())
        .await
        .expect("update");
    assert!(!updated, "an object never stored was updated");
    assert_stored_nowhere(reopened, &absent).await;
}
