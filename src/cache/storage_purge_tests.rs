//! `TieredStorage` with a disk tier, purged while other work goes on: purges racing
//! promotions, meta updates, fills and lookups leave nothing behind, and a tag purge after
//! a restart reaches entries not read yet whenever they are read. Helpers are those of
//! `storage_tests.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pingora::cache::key::CacheHashKey;
use pingora::cache::{CacheKey, Storage};
use tokio::sync::Barrier;

use super::disk_files::BLOCK_SIZE;
use super::storage_tests::{
    assert_stored_nowhere, begin, body, entry_files, key, lookup, own_tag, purge, read_to_end,
    reopen, span, spool_files, store, tagged_meta, with_disk, Cache, Purge, SITE,
};

const PURGES: [Purge; 4] = [Purge::Object, Purge::Url, Purge::Prefix, Purge::Tag];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_racing_promotions_and_meta_updates_leave_nothing_stored() {
    const OBJECTS: usize = 150;
    let cache = with_disk(64 << 20);
    let keys: Vec<CacheKey> = (0..OBJECTS)
        .map(|n| key(&format!("/race/{n:03}/object.png")))
        .collect();
    let size = |n: usize| 2000 + n;
    for (n, k) in keys.iter().enumerate() {
        store(cache.storage, k, &body(size(n), n as u8)).await;
    }
    // A restart: every object on disk and none in memory, so a lookup promotes.
    let storage = reopen(&cache, 64 << 20);
    for (n, k) in keys.into_iter().enumerate() {
        let k = Arc::new(k);
        // The three start together, so the purge lands inside the promotion or the update.
        let start = Arc::new(Barrier::new(3));
        let looker = {
            let (k, start) = (k.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                match lookup(storage, &k).await {
                    Some((_, mut hit)) => Some(read_to_end(&mut hit).await.expect("read")),
                    None => None,
                }
            })
        };
        let updater = {
            let (k, start) = (k.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                storage
                    .update_meta(&k, &tagged_meta(&k, size(n)), &span())
                    .await
                    .expect("update")
            })
        };
        start.wait().await;
        purge(storage, &k, PURGES[n % PURGES.len()]).await;
        // Either order is right, as long as a hit that won the race has the right bytes.
        if let Some(got) = looker.await.expect("looker task") {
            assert_eq!(got, body(size(n), n as u8), "object {n} read other bytes");
        }
        updater.await.expect("updater task");
        assert_stored_nowhere(storage, &k).await;
    }
    assert!(
        entry_files(&cache).0.is_empty(),
        "{:?}",
        entry_files(&cache).0
    );
}

/// Fillers, readers and purges on one key at once, ending with a purge while readers go
/// on: then the key is nowhere, whatever order things happened in before.
async fn one_key_race(cache: &Cache, size: usize) {
    let storage = cache.storage;
    let k = Arc::new(key(&format!("/contended/{size}.bin")));
    let data = Arc::new(body(size, 15));
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
                        assert!(
                            got == *data,
                            "a {}-byte read of a {size}-byte body",
                            got.len()
                        );
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let fills_done = Arc::new(AtomicBool::new(false));
    let purger = {
        let (k, fills_done) = (k.clone(), fills_done.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !fills_done.load(Ordering::Acquire) {
                purge(storage, &k, PURGES[n % PURGES.len()]).await;
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
    // The last purge, with readers still promoting and reading.
    purge(storage, &k, Purge::Url).await;
    done.store(true, Ordering::Release);
    for reader in readers {
        reader.await.expect("reader task");
    }
    assert_stored_nowhere(storage, &k).await;
    assert!(
        entry_files(cache).0.is_empty(),
        "{:?}",
        entry_files(cache).0
    );
    assert!(spool_files(cache).is_empty(), "{:?}", spool_files(cache));
    let disk = storage.disk.as_ref().expect("disk tier");
    assert_eq!(disk.index_for_tests().claimed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_lookups_and_purges_of_one_small_key_leave_it_absent_after_a_last_purge() {
    let cache = with_disk(64 << 20);
    one_key_race(&cache, 30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_lookups_and_purges_of_one_large_key_leave_it_absent_after_a_last_purge() {
    let cache = with_disk(64 << 20);
    one_key_race(&cache, BLOCK_SIZE + 30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_during_a_prefix_purge_does_not_bring_back_a_purged_object() {
    let cache = with_disk(1 << 30);
    // Enough entries that the purge's walk over the disk tier takes a while.
    for n in 0..9_000u32 {
        store(cache.storage, &key(&format!("/walk/{n:05}.png")), b"x").await;
    }
    let target = key("/walk/target.png");
    let data = body(2000, 16);
    store(cache.storage, &target, &data).await;
    // A restart: the target is on disk only, so a lookup promotes it to memory.
    let storage = reopen(&cache, 1 << 30);
    let purging = std::thread::spawn(move || storage.purge_prefix(&format!("{SITE}/walk/")));
    let mut promoted_during_purge = 0;
    while !purging.is_finished() {
        if let Some((_, mut hit)) = lookup(storage, &target).await {
            assert_eq!(read_to_end(&mut hit).await.expect("read"), data);
            promoted_during_purge += 1;
        }
    }
    let purged = purging.join().expect("purge thread");
    assert_eq!(purged, 9_001);
    assert!(
        storage.memory.get(&target.combined_bin()).is_none(),
        "the purged object is still in memory ({promoted_during_purge} hits during the purge)"
    );
    assert!(
        lookup(storage, &target).await.is_none(),
        "the purged object is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_after_a_restart_reaches_entries_not_yet_read_whenever_they_are_read() {
    let cache = with_disk(1 << 30);
    for n in 0..3_000u32 {
        store(cache.storage, &key(&format!("/walk/{n:05}.png")), b"x").await;
    }
    let (looked_up, read_later) = (key("/walk/target.png"), key("/walk/later.png"));
    let data = body(2000, 16);
    store(cache.storage, &looked_up, &data).await;
    store(cache.storage, &read_later, &data).await;
    // A restart: every entry found on disk, none read yet.
    let storage = reopen(&cache, 1 << 30);
    let disk = storage.disk.as_ref().expect("disk tier");
    assert_eq!(disk.index_for_tests().unread(), 3_002);
    // Neither is filed yet, so the purge removes nothing now; it visits no entry.
    assert_eq!(storage.purge_tag(&own_tag(&looked_up), None), 0);
    assert_eq!(
        storage.purge_tag(&own_tag(&read_later), Some("example.social")),
        0
    );
    // The first read of an entry a purge named since start finds it gone.
    assert!(
        lookup(storage, &looked_up).await.is_none(),
        "the purged object is served"
    );
    assert_eq!(disk.index_for_tests().unread(), 3_001);
    // As does the reading of every entry, which files the rest by tag.
    let (mut cursor, mut purged_when_read) = (None, 0);
    loop {
        let (next, purged) = disk.read_unread(cursor, 1024);
        purged_when_read += purged;
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    // Counted when it goes, since the purge could not count it.
    assert_eq!(purged_when_read, 1);
    assert!(
        lookup(storage, &read_later).await.is_none(),
        "the purged object is served"
    );
    {
        let index = disk.index_for_tests();
        assert_eq!(index.unread(), 0, "every entry was read");
        assert_eq!(index.tagged_entries(), 3_000);
        index.assert_consistent();
    }
    // Now the index answers.
    let other = key("/walk/00007.png");
    assert_eq!(
        storage.purge_tag(&own_tag(&other), Some("example.social")),
        1
    );
    assert_eq!(
        storage.purge_tag("path:/walk/00008.png", Some("other.social")),
        0
    );
    assert_eq!(storage.purge_tag("every-object", None), 2_999);
    assert!(
        entry_files(&cache).0.is_empty(),
        "{:?}",
        entry_files(&cache).0
    );
    disk.index_for_tests().assert_consistent();
}
