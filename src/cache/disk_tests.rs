//! The disk tier against real files: entries counted in whole filesystem blocks, both
//! bounds kept, URL and prefix purges finding their entries, and the index, the URL set
//! and the files staying in step through restarts and racing commits, purges and
//! evictions.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::disk::{DiskTier, BODY_HEADER_LEN};
use super::meta::StoredMeta;
use super::Hash;
use crate::config::model::DiskTierSettings;

fn settings(dir: &Path, max_size: u64, max_entries: u64) -> DiskTierSettings {
    DiskTierSettings {
        path: dir.join("cache"),
        max_size,
        max_object_size: max_size / 2,
        max_entries,
    }
}

fn url(n: u32) -> String {
    let folder = if n.is_multiple_of(2) { "even" } else { "odd" };
    format!("https://example.social/{folder}/{n}")
}

fn primary(n: u32) -> Hash {
    let mut hash = [0u8; 16];
    hash[..4].copy_from_slice(&n.to_be_bytes());
    hash
}

fn combined(n: u32, variant: u8) -> Hash {
    let mut hash = primary(n);
    hash[15] = variant + 1;
    hash
}

/// Stores a body of `len` bytes for variant `variant` of URL `n`, the way a fill does.
fn put(tier: &DiskTier, n: u32, variant: u8, len: usize) {
    let body = vec![b'x'; len];
    let temp = tier.begin_body().expect("spool file");
    temp.file
        .write_all_at(&body, BODY_HEADER_LEN)
        .expect("body written");
    let url: Arc<str> = Arc::from(url(n));
    tier.commit(
        temp,
        0,
        &url,
        &primary(n),
        &combined(n, variant),
        &StoredMeta::bare(),
        len as u64,
        vec![crc32fast::hash(&body)],
    )
    .expect("commit");
}

/// Every regular file under the format directory's shards (not the spool), with what the
/// filesystem allocates for them.
fn entry_files(dir: &Path) -> (BTreeSet<PathBuf>, u64) {
    let mut files = BTreeSet::new();
    let mut bytes = 0;
    let root = dir.join("cache/v1");
    for shard in std::fs::read_dir(&root).expect("format dir").flatten() {
        if shard.file_name() == "tmp" {
            continue;
        }
        for file in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            bytes += file.metadata().expect("metadata").blocks() * 512;
            files.insert(file.path());
        }
    }
    (files, bytes)
}

/// The files the index says exist.
fn indexed_files(tier: &DiskTier, dir: &Path) -> BTreeSet<PathBuf> {
    let index = tier.index_for_tests();
    index.assert_consistent();
    let mut files = BTreeSet::new();
    let mut cursor = None;
    loop {
        let next = index.walk_chunk(cursor, 4096, |combined, entry| {
            let primary = hex::encode(entry.primary);
            for ext in ["meta", "body"] {
                files.insert(dir.join("cache/v1").join(&primary[..2]).join(format!(
                    "{primary}-{}-{:016x}.{ext}",
                    hex::encode(combined),
                    entry.generation
                )));
            }
        });
        match next {
            Some(next) => cursor = Some(next),
            None => return files,
        }
    }
}

fn assert_index_matches_files(tier: &DiskTier, dir: &Path) {
    let (on_disk, _) = entry_files(dir);
    assert_eq!(indexed_files(tier, dir), on_disk);
}

#[test]
fn entries_are_counted_in_the_blocks_their_files_take_and_the_scan_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(&settings(dir.path(), 64 << 20, 1000)).expect("open");
    for n in 0..40 {
        put(&tier, n, 0, 300 + n as usize * 500);
    }
    let (files, allocated) = entry_files(dir.path());
    assert_eq!(files.len(), 80);
    let used = tier.index_for_tests().used();
    assert_eq!(
        used, allocated,
        "the index counts {used} bytes, the filesystem allocated {allocated}"
    );
    drop(tier);
    let reopened = DiskTier::open(&settings(dir.path(), 64 << 20, 1000)).expect("reopen");
    assert_eq!(reopened.index_for_tests().used(), used);
    assert_index_matches_files(&reopened, dir.path());
}

#[test]
fn both_bounds_hold_and_the_oldest_go_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let block = super::disk_files::filesystem_block(dir.path());
    // Room for 20 one-block-each entries by bytes, 10 by count.
    let tier = DiskTier::open(&settings(dir.path(), 40 * block, 10)).expect("open");
    for n in 0..25 {
        put(&tier, n, 0, 100);
    }
    assert_eq!(tier.index_for_tests().len(), 10);
    assert!(tier.lookup(&combined(14, 0)).is_none());
    assert!(tier.lookup(&combined(15, 0)).is_some());
    assert_index_matches_files(&tier, dir.path());
    drop(tier);
    // Reopened with a smaller byte bound: the scan's accounting evicts down to it.
    let tier = DiskTier::open(&settings(dir.path(), 8 * block, 10)).expect("reopen");
    assert_eq!(tier.index_for_tests().len(), 4);
    let (files, allocated) = entry_files(dir.path());
    assert_eq!(files.len(), 8);
    assert!(allocated <= 8 * block, "{allocated} bytes");
    assert_index_matches_files(&tier, dir.path());
}

#[test]
fn a_url_purge_takes_every_variant_also_of_entries_found_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(&settings(dir.path(), 64 << 20, 1000)).expect("open");
    for n in 0..20 {
        for variant in 0..3 {
            put(&tier, n, variant, 100);
        }
    }
    assert_eq!(tier.remove_primary(&primary(3)), 3);
    drop(tier);
    let tier = DiskTier::open(&settings(dir.path(), 64 << 20, 1000)).expect("reopen");
    assert_eq!(tier.remove_primary(&primary(3)), 0);
    assert_eq!(tier.remove_primary(&primary(4)), 3);
    assert!(tier.lookup(&combined(5, 2)).is_some());
    assert_eq!(tier.index_for_tests().len(), 54);
    assert_index_matches_files(&tier, dir.path());
}

#[test]
fn a_prefix_purge_walks_every_chunk_and_reads_urls_not_yet_known() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = DiskTier::open(&settings(dir.path(), 256 << 20, 10_000)).expect("open");
    // More entries than one chunk of the walk.
    for n in 0..2500 {
        put(&tier, n, 0, 10);
    }
    drop(tier);
    // After a restart no URL is known until its meta file is read.
    let tier = DiskTier::open(&settings(dir.path(), 256 << 20, 10_000)).expect("reopen");
    assert!(tier.lookup(&combined(7, 0)).is_some());
    assert_eq!(tier.remove_prefix("https://example.social/odd/"), 1250);
    assert_eq!(tier.remove_prefix("https://example.social/odd/"), 0);
    assert_eq!(tier.index_for_tests().len(), 1250);
    assert!(tier.lookup(&combined(8, 0)).is_some());
    assert_index_matches_files(&tier, dir.path());
}

#[test]
fn racing_commits_purges_and_evictions_leave_index_url_set_and_files_in_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tier = Arc::new(DiskTier::open(&settings(dir.path(), 64 << 20, 60)).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..2u32 {
        let tier = tier.clone();
        writers.push(std::thread::spawn(move || {
            // The same 40 URLs over and over: replaced copies, and evictions past 60.
            for round in 0..600u32 {
                let n = (round * 7 + writer * 13) % 40;
                put(
                    &tier,
                    n,
                    (round % 3) as u8,
                    50 + (round % 5) as usize * 2000,
                );
            }
        }));
    }
    let mut purgers = Vec::new();
    {
        let (tier, stop) = (tier.clone(), stop.clone());
        purgers.push(std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tier.remove_primary(&primary(n % 40));
                let _ = tier.lookup(&combined((n * 3) % 40, (n % 3) as u8));
                n += 1;
            }
        }));
    }
    {
        let (tier, stop) = (tier.clone(), stop.clone());
        purgers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tier.remove_prefix("https://example.social/odd/3");
                tier.index_for_tests().assert_consistent();
            }
        }));
    }
    for writer in writers {
        writer.join().expect("writer");
    }
    stop.store(true, Ordering::Relaxed);
    for purger in purgers {
        purger.join().expect("purger");
    }
    assert!(tier.index_for_tests().len() <= 60);
    assert_index_matches_files(&tier, dir.path());
    let used = tier.index_for_tests().used();
    let entries = tier.index_for_tests().len();
    drop(tier);
    let tier = DiskTier::open(&settings(dir.path(), 64 << 20, 60)).expect("reopen");
    assert_eq!(tier.index_for_tests().used(), used);
    assert_eq!(tier.index_for_tests().len(), entries);
    assert_index_matches_files(&tier, dir.path());
}
