//! `TieredStorage` over a disk tier under pressure, through pingora's traits: fills that
//! overflow a small tier stay within its bound and give back every byte they reserved,
//! damaged body files are a miss or an error (never other bytes), and purges racing
//! fills, reads and meta updates of one key leave nothing behind. Helpers are those of
//! `storage_tests.rs`.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pingora::cache::{CacheKey, Storage};

use super::disk::BODY_HEADER_LEN;
use super::disk_files::BLOCK_SIZE;
use super::storage_tests::{
    assert_stored_nowhere, begin, body, entry_files, key, lookup, meta, purge, read_to_end, reopen,
    span, spool_files, store, tier_of, with_disk, Cache, Purge, MEMORY_MAX_OBJECT,
};

const PURGES: [Purge; 3] = [Purge::Object, Purge::Url, Purge::Prefix];

#[tokio::test]
async fn fills_into_a_small_disk_tier_stay_within_its_bound() {
    const MAX: u64 = 1 << 20;
    let cache = with_disk(MAX);
    let disk = cache.storage.disk.as_ref().expect("disk tier");
    // Disk only (over what memory takes), a tenth of the tier each: 40 of them overflow it.
    let size = 100_000;
    assert!(size as u64 > MEMORY_MAX_OBJECT);
    let keys: Vec<CacheKey> = (0..40)
        .map(|n| key(&format!("/evict/{n:02}.bin")))
        .collect();
    for (n, k) in keys.iter().enumerate() {
        store(cache.storage, k, &body(size, n as u8)).await;
        let claimed = disk.index_for_tests().claimed();
        assert!(
            claimed <= MAX,
            "after fill {n} the tier claims {claimed} bytes"
        );
        let (_, on_disk) = entry_files(&cache);
        assert!(
            on_disk <= MAX,
            "after fill {n} the files take {on_disk} bytes"
        );
    }
    // The newest is whole, the oldest went first.
    let (_, mut hit) = lookup(cache.storage, &keys[39]).await.expect("newest kept");
    assert_eq!(read_to_end(&mut hit).await.expect("read"), body(size, 39));
    assert!(
        lookup(cache.storage, &keys[0]).await.is_none(),
        "oldest kept"
    );
    // What the tier counts is what its files take, and it keeps what fits.
    let (files, on_disk) = entry_files(&cache);
    let (used, entries) = {
        let index = disk.index_for_tests();
        (index.used(), index.len())
    };
    assert_eq!(used, on_disk);
    assert_eq!(files.len(), 2 * entries);
    assert!(entries >= 5, "only {entries} entries kept in {MAX} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fills_dropped_purged_or_over_budget_give_back_every_reserved_byte() {
    const MAX: u64 = 2 << 20;
    let cache = with_disk(MAX);
    let storage = cache.storage;
    // Eight bodies of 150 kB in flight at once claim more than the half of the tier that
    // arriving bodies may have: some run over budget and are served but not kept.
    let writers: Vec<_> = (0..8u32)
        .map(|t| {
            tokio::spawn(async move {
                for round in 0..10u32 {
                    let n = t * 10 + round;
                    let k = key(&format!("/busy/{n:03}.bin"));
                    let data = body(150_000, n as u8);
                    let mut writer = begin(storage, &k, data.len()).await;
                    writer
                        .write_body(Bytes::copy_from_slice(&data[..100_000]), false)
                        .await
                        .expect("write");
                    tokio::task::yield_now().await;
                    match n % 3 {
                        0 => drop(writer),
                        purged_or_whole => {
                            if purged_or_whole == 1 {
                                purge(storage, &k, Purge::Object).await;
                            }
                            writer
                                .write_body(Bytes::copy_from_slice(&data[100_000..]), true)
                                .await
                                .expect("write");
                            writer.finish().await.expect("finish");
                        }
                    }
                    let disk = storage.disk.as_ref().expect("disk tier");
                    let claimed = disk.index_for_tests().claimed();
                    assert!(claimed <= MAX, "the tier claims {claimed} bytes");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    let disk = storage.disk.as_ref().expect("disk tier");
    let (claimed, used) = {
        let index = disk.index_for_tests();
        (index.claimed(), index.used())
    };
    assert_eq!(
        claimed, used,
        "no body is arriving, yet bytes stay reserved"
    );
    assert_eq!(used, entry_files(&cache).1);
    assert!(used <= MAX);
    assert!(spool_files(&cache).is_empty(), "{:?}", spool_files(&cache));
    for n in (0..80u32).filter(|n| n % 3 != 2) {
        let k = key(&format!("/busy/{n:03}.bin"));
        assert_stored_nowhere(storage, &k).await;
    }
}

/// The one body file under the tier's entries.
fn body_file(cache: &Cache) -> PathBuf {
    let bodies: Vec<PathBuf> = entry_files(cache)
        .0
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "body"))
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    bodies.into_iter().next().expect("one body file")
}

/// Inverts the byte at `offset` of the file.
fn flip(path: &PathBuf, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("body file opens");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("byte read");
    byte[0] ^= 0xff;
    file.write_all_at(&byte, offset).expect("byte written");
}

#[tokio::test]
async fn a_flipped_byte_in_a_later_block_ends_the_read_with_an_error_not_other_bytes() {
    let cache = with_disk(64 << 20);
    let k = key("/media/damaged.mp4");
    let data = body(3 * BLOCK_SIZE, 11);
    store(cache.storage, &k, &data).await;
    flip(
        &body_file(&cache),
        BODY_HEADER_LEN + BLOCK_SIZE as u64 + 1234,
    );

    let (_, mut hit) = lookup(cache.storage, &k)
        .await
        .expect("the first block is sound: a hit");
    assert_eq!(tier_of(&hit), "disk");
    let mut got = Vec::new();
    let outcome = loop {
        match hit.read_body().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "a damaged body was read to its end");
    assert!(got.len() <= BLOCK_SIZE, "bytes past the damage were served");
    assert!(
        data.starts_with(&got),
        "bytes other than the body's were served"
    );
    // The damaged entry went: the next request is a clean miss.
    assert_stored_nowhere(cache.storage, &k).await;
    assert!(
        entry_files(&cache).0.is_empty(),
        "{:?}",
        entry_files(&cache).0
    );
}

#[tokio::test]
async fn a_flipped_byte_in_the_first_block_is_a_miss() {
    let cache = with_disk(64 << 20);
    let k = key("/media/damaged-first.mp4");
    store(cache.storage, &k, &body(2 * BLOCK_SIZE, 12)).await;
    flip(&body_file(&cache), BODY_HEADER_LEN + 10);
    assert!(
        lookup(cache.storage, &k).await.is_none(),
        "damage was a hit"
    );
    assert!(
        entry_files(&cache).0.is_empty(),
        "{:?}",
        entry_files(&cache).0
    );
}

#[tokio::test]
async fn a_damaged_small_body_is_a_miss_and_not_promoted_to_memory() {
    let cache = with_disk(64 << 20);
    let k = key("/media/damaged-small.png");
    let data = body(20_000, 13);
    store(cache.storage, &k, &data).await;
    flip(&body_file(&cache), BODY_HEADER_LEN + 19_999);
    // After a restart the memory tier is empty: the lookup reads the disk copy whole.
    let storage = reopen(&cache, 64 << 20);
    assert!(lookup(storage, &k).await.is_none(), "damage was a hit");
    assert_stored_nowhere(storage, &k).await;
    assert!(
        entry_files(&cache).0.is_empty(),
        "{:?}",
        entry_files(&cache).0
    );
}

#[tokio::test]
async fn a_truncated_body_file_is_a_miss() {
    let cache = with_disk(64 << 20);
    let k = key("/media/truncated.mp4");
    store(cache.storage, &k, &body(BLOCK_SIZE + 100, 14)).await;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(body_file(&cache))
        .expect("body file opens");
    file.set_len(BODY_HEADER_LEN + 1000).expect("truncated");
    assert!(
        lookup(cache.storage, &k).await.is_none(),
        "a cut body was a hit"
    );
    assert!(
        entry_files(&cache).0.is_empty(),
        "{:?}",
        entry_files(&cache).0
    );
}

/// Fillers, readers, meta updates and purges on one key at once, ending with a purge
/// while readers and updates go on: then the key is nowhere, whatever order things
/// happened in before. The body is larger than memory takes, so every copy is on disk and
/// no lookup promotes one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_lookups_updates_and_purges_of_one_key_leave_it_absent_after_a_last_purge() {
    let cache = with_disk(64 << 20);
    let storage = cache.storage;
    let k = Arc::new(key("/contended/object.bin"));
    let data = Arc::new(body(BLOCK_SIZE + 30_000, 15));
    assert!(data.len() as u64 > MEMORY_MAX_OBJECT);
    let fillers: Vec<_> = (0..3)
        .map(|_| {
            let (k, data) = (k.clone(), data.clone());
            tokio::spawn(async move {
                for _ in 0..15 {
                    let mut writer = begin(storage, &k, data.len()).await;
                    for chunk in data.chunks(data.len() / 3 + 1) {
                        writer
                            .write_body(Bytes::copy_from_slice(chunk), false)
                            .await
                            .expect("write");
                        tokio::task::yield_now().await;
                    }
                    writer.finish().await.expect("finish");
                }
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (k, data, done) = (k.clone(), data.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Acquire) {
                    if let Some((_, mut hit)) = lookup(storage, &k).await {
                        let got = read_to_end(&mut hit).await.expect("a hit reads whole");
                        assert!(got == *data, "a {}-byte read", got.len());
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let updater = {
        let (k, data, done) = (k.clone(), data.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                storage
                    .update_meta(&k, &meta(data.len()), &span())
                    .await
                    .expect("update");
                tokio::task::yield_now().await;
            }
        })
    };
    let fills_done = Arc::new(AtomicBool::new(false));
    let purger = {
        let (k, fills_done) = (k.clone(), fills_done.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !fills_done.load(Ordering::Acquire) {
                purge(storage, &k, PURGES[n % 3]).await;
                n += 1;
                tokio::task::yield_now().await;
            }
        })
    };
    for filler in fillers {
        filler.await.expect("filler task");
    }
    fills_done.store(true, Ordering::Release);
    purger.await.expect("purger task");
    // The last purge, with readers and meta updates still going.
    purge(storage, &k, Purge::Url).await;
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.await.expect("reader task");
    }
    updater.await.expect("updater task");
    assert_stored_nowhere(storage, &k).await;
    // A meta update racing the purge must not have written a meta file back.
    assert!(
        entry_files(&cache).0.is_empty(),
        "{:?}",
        entry_files(&cache).0
    );
    assert!(spool_files(&cache).is_empty(), "{:?}", spool_files(&cache));
    let disk = storage.disk.as_ref().expect("disk tier");
    assert_eq!(disk.index_for_tests().claimed(), 0);
}
