//! How a URL purge on a large disk-tier index affects hits: 1,000 URL purges on an index of
//! 1,000,000 entries while another thread looks entries up the way a disk hit does. Run on
//! purpose, with an optimised build:
//!
//! ```text
//! cargo test --release --lib purging_a_thousand_urls_from_a_million_entries -- --ignored --nocapture
//! ```
//!
//! It measures the index alone, under its lock, because that is what a purge and a hit
//! share: a hit holds the lock for an LRU look-up, a purge for taking its entries out, and
//! each deletes or reads files only after letting go. A million real entries would be two
//! million files, more than a test should write. For comparison it also times a few purges
//! the way they were done before the URL set: a walk over every entry under the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::disk_index::{Bounds, DiskEntry, DiskIndex};
use super::Hash;

const ENTRIES: u32 = 1_000_000;
const PURGES: u32 = 1_000;
/// Purges timed the old way; each walks the whole index.
const FULL_SCAN_PURGES: u32 = 20;

/// Spreads entry numbers over the hash space, as real URL hashes are.
fn spread(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn primary(n: u32) -> Hash {
    let mut hash = [0u8; 16];
    hash[..8].copy_from_slice(&spread(u64::from(n)).to_be_bytes());
    hash[8..].copy_from_slice(&spread(u64::from(n) << 32).to_be_bytes());
    hash
}

fn combined(n: u32) -> Hash {
    let mut hash = primary(n);
    hash[15] ^= 0x5a;
    hash
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn filled_index() -> DiskIndex {
    let mut index = DiskIndex::new(Bounds {
        max_bytes: u64::MAX,
        max_entries: ENTRIES as usize,
    });
    for n in 0..ENTRIES {
        let url =
            format!("https://example.social/system/media_attachments/files/{n:09}/original.png");
        index.insert(
            combined(n),
            DiskEntry {
                primary: primary(n),
                generation: u64::from(n),
                size: 8192,
                url: Some(Arc::from(url)),
                touched_secs: 0,
                committed: None,
                checked: None,
            },
            Box::new([]),
        );
    }
    index
}

struct Latencies(Vec<u64>);

impl Latencies {
    fn at(&mut self, quantile: f64) -> Duration {
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * quantile) as usize;
        Duration::from_nanos(self.0.get(i).copied().unwrap_or(0))
    }

    fn report(&mut self, what: &str) {
        println!(
            "{what}: {} look-ups, p50 {:?}, p99 {:?}, p99.9 {:?}, worst {:?}",
            self.0.len(),
            self.at(0.5),
            self.at(0.99),
            self.at(0.999),
            self.at(1.0)
        );
    }
}

/// Looks up entries (the part of a disk hit under the lock) until `done`, timing each.
fn hits_until(index: &Mutex<DiskIndex>, done: &AtomicBool) -> Latencies {
    let mut latencies = Vec::with_capacity(4_000_000);
    let mut n: u32 = 0;
    while !done.load(Ordering::Relaxed) {
        // Entries past the purged range, so every look-up finds one.
        let key =
            combined(PURGES * 2 + (spread(u64::from(n)) % u64::from(ENTRIES - PURGES * 2)) as u32);
        let started = Instant::now();
        let found = index.lock().get(&key).map(|e| e.generation);
        latencies.push(started.elapsed().as_nanos() as u64);
        assert!(found.is_some());
        n = n.wrapping_add(1);
    }
    Latencies(latencies)
}

/// Runs `purge` on its own thread while hits run on this one.
fn during(
    index: &Arc<Mutex<DiskIndex>>,
    purge: impl FnOnce(&Mutex<DiskIndex>) + Send + 'static,
) -> (Duration, Latencies) {
    let done = Arc::new(AtomicBool::new(false));
    let purger = {
        let (index, done) = (index.clone(), done.clone());
        std::thread::spawn(move || {
            // Let the hit thread get going first.
            std::thread::sleep(Duration::from_millis(50));
            let started = Instant::now();
            purge(&index);
            let took = started.elapsed();
            std::thread::sleep(Duration::from_millis(50));
            done.store(true, Ordering::Relaxed);
            took
        })
    };
    let latencies = hits_until(index, &done);
    (purger.join().expect("purger"), latencies)
}

#[test]
#[ignore = "a benchmark: run it on purpose, with --release"]
fn purging_a_thousand_urls_from_a_million_entries_while_hits_run() {
    let before = resident_kib();
    let started = Instant::now();
    let index = filled_index();
    println!(
        "filled {} entries in {:?}; resident memory grew by {} MiB ({} bytes per entry, URLs of 75 bytes included)",
        index.len(),
        started.elapsed(),
        (resident_kib() - before) / 1024,
        (resident_kib() - before) * 1024 / u64::from(ENTRIES)
    );
    let index = Arc::new(Mutex::new(index));

    let (_, mut quiet) = during(&index, |_| std::thread::sleep(Duration::from_millis(500)));
    quiet.report("without purges");

    let holds = Arc::new(Mutex::new(Latencies(Vec::new())));
    let (took, mut purging) = during(&index, {
        let holds = holds.clone();
        move |index| {
            for n in 0..PURGES {
                let mut locked = index.lock();
                let started = Instant::now();
                let removed = locked.remove_url(&primary(n));
                let held = started.elapsed();
                drop(locked);
                assert_eq!(removed.len(), 1);
                holds.lock().0.push(held.as_nanos() as u64);
            }
        }
    });
    purging.report("during 1,000 URL purges");
    let mut holds = holds.lock();
    println!(
        "1,000 URL purges through the URL set took {took:?}; each held the lock for p50 {:?}, p99 {:?}, at most {:?}",
        holds.at(0.5),
        holds.at(0.99),
        holds.at(1.0)
    );

    let (took, mut scanning) = during(&index, |index| {
        for n in PURGES..PURGES + FULL_SCAN_PURGES {
            let removed = index.lock().remove_url_by_walking_every_entry(&primary(n));
            assert_eq!(removed.len(), 1);
        }
    });
    scanning.report("during 20 URL purges that walk every entry (the old way)");
    println!(
        "20 URL purges walking every entry took {took:?} ({:?} each, so 1,000 would take {:?})",
        took / FULL_SCAN_PURGES,
        took / FULL_SCAN_PURGES * PURGES
    );
    index.lock().assert_consistent();
}
