//! `TieredStorage` over a disk tier under pressure, through pingora's traits: fills that
//! overflow a small tier stay within its bound and give back every byte they reserved, and
//! damaged body files are a miss or an error (never other bytes). Purges are in
//! `storage_purge_tests.rs`. Helpers are those of `storage_tests.rs`.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;

use super::disk::BODY_HEADER_LEN;
use super::disk_files::BLOCK_SIZE;
use super::storage_tests::{
    assert_stored_nowhere, begin, body, entry_files, key, lookup, purge, read_to_end, reopen,
    spool_files, store, tier_of, with_disk, Cache, Purge, MEMORY_MAX_OBJECT,
};

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

#[tokio::test]
async fn the_body_file_committed_for_a_request_is_linked_out_and_outlives_its_entry() {
    let cache = with_disk(8 << 20);
    let k = key("/link/a.bin");
    let before = std::time::Instant::now();
    let data = body(300_000, 7);
    store(cache.storage, &k, &data).await;
    let out = tempfile::tempdir().expect("dir");
    let linked = out.path().join("copy.body");
    let offset = cache
        .storage
        .link_committed_body(&k, before, &linked)
        .expect("link")
        .expect("committed since the request began");
    assert_eq!(offset, BODY_HEADER_LEN);
    let bytes = std::fs::read(&linked).expect("linked file");
    assert_eq!(&bytes[BODY_HEADER_LEN as usize..], &data[..]);
    // Not an entry committed before the request began (an older copy of the object).
    let later = std::time::Instant::now();
    let elsewhere = out.path().join("stale.body");
    assert_eq!(
        cache
            .storage
            .link_committed_body(&k, later, &elsewhere)
            .expect("look"),
        None
    );
    assert!(!elsewhere.exists());
    // Nothing for a key the disk tier does not hold.
    let other = out.path().join("other.body");
    assert_eq!(
        cache
            .storage
            .link_committed_body(&key("/link/none.bin"), before, &other)
            .expect("look"),
        None
    );
    // Purged from the cache, the linked bytes stay whole for their holder.
    purge(cache.storage, &k, Purge::Object).await;
    assert_stored_nowhere(cache.storage, &k).await;
    assert_eq!(
        &std::fs::read(&linked).expect("still there")[BODY_HEADER_LEN as usize..],
        &data[..]
    );
}

#[tokio::test]
async fn holds_url_sees_arriving_and_stored_objects_and_nothing_after_a_purge() {
    let cache = with_disk(64 << 20);
    let arriving = key("/page/arriving");
    let writer = begin(cache.storage, &arriving, 10).await;
    assert!(cache.storage.holds_url(&arriving.primary_bin()));
    drop(writer);

    let small = key("/page/small");
    let large = key("/media/large.mp4");
    store(cache.storage, &small, &body(1_000, 5)).await;
    store(cache.storage, &large, &body(2 * BLOCK_SIZE, 6)).await;
    assert!(cache.storage.holds_url(&small.primary_bin()));
    assert!(
        cache.storage.holds_url(&large.primary_bin()),
        "on disk only"
    );
    assert!(!cache.storage.holds_url(&key("/page/other").primary_bin()));
    cache.storage.purge_url(&small.primary_bin());
    assert!(!cache.storage.holds_url(&small.primary_bin()));

    // A restart's storage knows what its disk holds before anything is read.
    let reopened = reopen(&cache, 64 << 20);
    assert!(reopened.holds_url(&large.primary_bin()));
}

/// The copy a disk lookup would serve, its generation, and whether it may be sent from
/// its file when it must have been checked within an hour.
fn offered_for_sending(cache: &Cache, k: &CacheKey) -> (u64, bool) {
    let combined = k.combined_bin();
    let generation = cache
        .storage
        .disk_copy(&combined)
        .expect("a disk copy")
        .generation;
    let hour = std::time::Duration::from_secs(3600);
    let offered = cache
        .storage
        .disk_hit_if_current(&combined, generation, hour, |_| true)
        .is_some();
    (generation, offered)
}

#[tokio::test]
async fn a_disk_copy_is_offered_for_sending_only_after_a_read_checked_it_whole() {
    let cache = with_disk(64 << 20);
    let k = key("/media/checked.mp4");
    let data = body(3 * BLOCK_SIZE + 10, 21);
    store(cache.storage, &k, &data).await;
    let (generation, offered) = offered_for_sending(&cache, &k);
    assert!(!offered, "offered before any read");
    // A read that stops after the first block checks only that one.
    let (_, mut hit) = lookup(cache.storage, &k).await.expect("hit");
    assert_eq!(tier_of(&hit), "disk");
    assert!(hit.read_body().await.expect("first block").is_some());
    drop(hit);
    assert!(
        !offered_for_sending(&cache, &k).1,
        "offered after one block"
    );
    // A read to the end checks every block.
    let (_, mut hit) = lookup(cache.storage, &k).await.expect("hit");
    assert_eq!(read_to_end(&mut hit).await.expect("read"), data);
    assert_eq!(offered_for_sending(&cache, &k), (generation, true));
    // Not another generation, and not once the check is older than asked for.
    let combined = k.combined_bin();
    let hour = std::time::Duration::from_secs(3600);
    assert!(cache
        .storage
        .disk_hit_if_current(&combined, generation + 1, hour, |_| true)
        .is_none());
    assert!(cache
        .storage
        .disk_hit_if_current(&combined, generation, std::time::Duration::ZERO, |_| true)
        .is_none());
    // A copy stored again is a new one, unchecked.
    store(cache.storage, &k, &data).await;
    let (again, offered) = offered_for_sending(&cache, &k);
    assert_ne!(again, generation);
    assert!(!offered, "a new copy was offered unchecked");
}

#[tokio::test]
async fn a_read_that_finds_damage_never_offers_the_copy_for_sending() {
    let cache = with_disk(64 << 20);
    let k = key("/media/damaged-last.mp4");
    let data = body(2 * BLOCK_SIZE + 500, 22);
    store(cache.storage, &k, &data).await;
    let (generation, _) = offered_for_sending(&cache, &k);
    flip(
        &body_file(&cache),
        BODY_HEADER_LEN + 2 * BLOCK_SIZE as u64 + 7,
    );
    let (_, mut hit) = lookup(cache.storage, &k).await.expect("hit");
    assert!(read_to_end(&mut hit).await.is_err(), "damage read through");
    let hour = std::time::Duration::from_secs(3600);
    assert!(cache
        .storage
        .disk_hit_if_current(&k.combined_bin(), generation, hour, |_| true)
        .is_none());
    assert_stored_nowhere(cache.storage, &k).await;
}

#[tokio::test]
async fn a_read_from_past_the_first_block_never_offers_the_copy_for_sending() {
    let cache = with_disk(64 << 20);
    let k = key("/media/ranged.mp4");
    let data = body(3 * BLOCK_SIZE, 23);
    store(cache.storage, &k, &data).await;
    // A range from the second block to the end reads every block but the first.
    let (_, mut hit) = lookup(cache.storage, &k).await.expect("hit");
    hit.seek(BLOCK_SIZE, None).expect("seek");
    assert_eq!(
        read_to_end(&mut hit).await.expect("read"),
        data[BLOCK_SIZE..]
    );
    assert!(!offered_for_sending(&cache, &k).1, "offered after a range");
}
