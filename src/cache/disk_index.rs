//! The disk tier's index: which entries exist, in least recently used order, what they take
//! on disk, and which entries each URL has.
//!
//! Every change goes through the methods here, which keep three things in step: the LRU of
//! entries by variant (combined hash), the set of (URL hash, variant) pairs a URL purge finds
//! its entries through, and the byte count. Eviction keeps both bounds, allocated bytes and
//! entries, so the index's own memory is bounded by `max_entries`.
//!
//! An entry's size is what the filesystem allocates for its two files: each rounded up to
//! the filesystem's block, since a file of 300 bytes still takes a whole block (and an
//! inode). The directory records naming the files are not counted: they live in the shard
//! directories, which grow with the largest number of names they ever held and do not shrink.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use lru::LruCache;

use super::tag_index::TagIndex;
use super::tags::{purge_matches, Tags};
use super::Hash;

/// What the index keeps per entry.
#[derive(Clone, Debug)]
pub(super) struct DiskEntry {
    pub(super) primary: Hash,
    pub(super) generation: u64,
    /// Bytes the filesystem allocates for both files.
    pub(super) size: u64,
    /// Known once the meta file has been read (entries found by the start-up scan are not
    /// read until used); so are its tags, filed in the index's tag index from then on.
    pub(super) url: Option<Arc<str>>,
    pub(super) touched_secs: u64,
    /// When this process committed it (`None` for entries found at start).
    pub(super) committed: Option<Instant>,
    /// When this process last read every block of its body and found each one good.
    pub(super) checked: Option<Instant>,
}

/// Bytes a file of `len` bytes takes on a filesystem whose blocks are `block` bytes.
pub(super) fn allocated(len: u64, block: u64) -> u64 {
    len.div_ceil(block).saturating_mul(block)
}

/// How much the tier may hold.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// Allocated bytes of committed entries and of bodies still arriving.
    pub(super) max_bytes: u64,
    /// Committed entries.
    pub(super) max_entries: usize,
}

/// A (URL hash, variant hash) pair: a URL's variants are one range of these.
pub(super) type UrlKey = (Hash, Hash);

/// An entry taken out of the index, for its files to be deleted.
pub(super) type Removed = (Hash, DiskEntry);

pub(super) struct DiskIndex {
    entries: LruCache<Hash, DiskEntry>,
    /// Every entry's (URL hash, variant hash). Ordered, so that a walk over all entries (a
    /// prefix purge) can go in chunks from a cursor and let go of the lock between them.
    by_url: BTreeSet<UrlKey>,
    /// Allocated bytes of committed entries.
    used: u64,
    /// Allocated bytes promised to bodies still being written.
    reserved: u64,
    bounds: Bounds,
    /// The entries whose tags are known, by tag.
    tags: TagIndex,
    /// Entries whose meta file has not been read yet (URL and tags unknown).
    unread: usize,
    /// Tag purges (tag, host) applied while entries were unread, checked against each as it
    /// is read; dropped once every entry has been read.
    purges_of_unread: Vec<(String, Option<String>)>,
}

/// Tag purges remembered for unread entries at most; past it a tag purge reads them.
const MAX_PURGES_OF_UNREAD: usize = 4096;

impl DiskIndex {
    pub(super) fn new(bounds: Bounds) -> Self {
        DiskIndex {
            entries: LruCache::unbounded(),
            by_url: BTreeSet::new(),
            used: 0,
            reserved: 0,
            bounds,
            tags: TagIndex::default(),
            unread: 0,
            purges_of_unread: Vec::new(),
        }
    }

    /// Entries whose URL and tags are not known yet.
    pub(super) fn unread(&self) -> usize {
        self.unread
    }

    /// The entries (with their generations) filed under a tag with this hash.
    pub(super) fn tagged(&self, tag: u64) -> Vec<(Hash, &DiskEntry)> {
        self.tags
            .tagged(tag)
            .into_iter()
            .filter_map(|combined| Some((combined, self.entries.peek(&combined)?)))
            .collect()
    }

    /// Entries filed in the tag index.
    pub(super) fn tagged_entries(&self) -> usize {
        self.tags.len()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Allocated bytes of committed entries.
    pub(super) fn used(&self) -> u64 {
        self.used
    }

    /// Allocated bytes of committed entries and of bodies still arriving.
    pub(super) fn claimed(&self) -> u64 {
        self.used + self.reserved
    }

    /// The entry, leaving its place in the LRU order alone.
    pub(super) fn peek(&self, combined: &Hash) -> Option<&DiskEntry> {
        self.entries.peek(combined)
    }

    /// The entry, now the most recently used.
    pub(super) fn get(&mut self, combined: &Hash) -> Option<&DiskEntry> {
        self.entries.get(combined)
    }

    fn live_mut(&mut self, combined: &Hash, generation: u64) -> Option<&mut DiskEntry> {
        self.entries
            .peek_mut(combined)
            .filter(|e| e.generation == generation)
    }

    /// Records that every block of this copy's body was just read and found good.
    pub(super) fn note_checked(&mut self, combined: &Hash, generation: u64) {
        if let Some(live) = self.live_mut(combined, generation) {
            live.checked = Some(Instant::now());
        }
    }

    /// Records the URL and tags read from an entry's meta file, if that copy is still
    /// indexed and they were not known. An entry a tag purge since start names is taken
    /// out instead, and returned for its files to be deleted.
    pub(super) fn learn(
        &mut self,
        combined: &Hash,
        generation: u64,
        url: Arc<str>,
        tags: &Tags,
    ) -> Option<Removed> {
        let live = self.live_mut(combined, generation)?;
        if live.url.is_some() {
            return None;
        }
        live.url = Some(url.clone());
        self.unread = self.unread.saturating_sub(1);
        let purged = self
            .purges_of_unread
            .iter()
            .any(|(tag, host)| purge_matches(tags, &url, tag, host.as_deref()));
        if self.unread == 0 {
            self.purges_of_unread = Vec::new();
        }
        if purged {
            return self.remove(combined);
        }
        self.tags.insert(*combined, generation, tags.hashes());
        None
    }

    /// Remembers a tag purge for the entries not read yet, which are filed only when read:
    /// each is checked against it then. `false` when too many are remembered already (the
    /// purge must then read them itself).
    pub(super) fn purge_unread(&mut self, tag: &str, host: Option<&str>) -> bool {
        if self.unread == 0 {
            return true;
        }
        if self.purges_of_unread.len() >= MAX_PURGES_OF_UNREAD {
            return false;
        }
        self.purges_of_unread
            .push((tag.to_string(), host.map(str::to_string)));
        true
    }

    /// Files an entry's tags anew after its meta file was rewritten.
    pub(super) fn retag(&mut self, combined: &Hash, generation: u64, tags: Box<[u64]>) {
        if self
            .live_mut(combined, generation)
            .is_some_and(|e| e.url.is_some())
        {
            self.tags.insert(*combined, generation, tags);
        }
    }

    /// Moves an entry's last use to `now` when it is at least `interval` old; whether it
    /// moved (and its meta file's time should follow).
    pub(super) fn touch(
        &mut self,
        combined: &Hash,
        generation: u64,
        now: u64,
        interval: u64,
    ) -> bool {
        match self.live_mut(combined, generation) {
            Some(live) if now.saturating_sub(live.touched_secs) >= interval => {
                live.touched_secs = now;
                true
            }
            _ => false,
        }
    }

    /// Sets the size of an entry whose meta file was rewritten.
    pub(super) fn resize(&mut self, combined: &Hash, generation: u64, size: u64) {
        let Some(live) = self
            .entries
            .peek_mut(combined)
            .filter(|e| e.generation == generation)
        else {
            return;
        };
        self.used = self.used.saturating_sub(live.size) + size;
        live.size = size;
    }

    /// Adds an entry as the most recently used, with its tags when its URL is known.
    /// Returns the copy it replaces, unless that is the same generation (the same files).
    pub(super) fn insert(
        &mut self,
        combined: Hash,
        entry: DiskEntry,
        tags: Box<[u64]>,
    ) -> Option<Removed> {
        let (primary, generation) = (entry.primary, entry.generation);
        self.used += entry.size;
        if entry.url.is_some() {
            self.tags.insert(combined, generation, tags);
        } else {
            self.unread += 1;
        }
        let replaced = self.entries.push(combined, entry);
        if let Some((_, old)) = &replaced {
            self.used = self.used.saturating_sub(old.size);
            if old.url.is_none() {
                self.unread = self.unread.saturating_sub(1);
            }
            if old.generation != generation {
                self.tags.remove(&combined, old.generation);
            }
            // Never in practice (the variant hash covers the URL), but the set must not
            // keep a pair with no entry.
            if old.primary != primary {
                self.by_url.remove(&(old.primary, combined));
            }
        }
        self.by_url.insert((primary, combined));
        replaced.filter(|(_, old)| old.generation != generation)
    }

    /// Takes an entry out, whatever its generation.
    pub(super) fn remove(&mut self, combined: &Hash) -> Option<Removed> {
        let removed = self.entries.pop_entry(combined)?;
        self.forget(&removed);
        Some(removed)
    }

    /// Takes an entry out if it is still this generation (and not a newer copy).
    pub(super) fn remove_generation(
        &mut self,
        combined: &Hash,
        generation: u64,
    ) -> Option<Removed> {
        self.live_mut(combined, generation)?;
        self.remove(combined)
    }

    /// Whether any variant of the URL whose hash is `primary` is stored.
    pub(super) fn has_url(&self, primary: &Hash) -> bool {
        self.by_url
            .range((*primary, [0u8; 16])..=(*primary, [0xff; 16]))
            .next()
            .is_some()
    }

    /// Takes out every variant of the URL whose hash is `primary`: a range of the URL set,
    /// never a walk over every entry.
    pub(super) fn remove_url(&mut self, primary: &Hash) -> Vec<Removed> {
        let variants: Vec<Hash> = self
            .by_url
            .range((*primary, [0u8; 16])..=(*primary, [0xff; 16]))
            .map(|(_, combined)| *combined)
            .collect();
        variants
            .iter()
            .filter_map(|combined| self.remove(combined))
            .collect()
    }

    fn forget(&mut self, (combined, entry): &Removed) {
        self.used = self.used.saturating_sub(entry.size);
        self.by_url.remove(&(entry.primary, *combined));
        if entry.url.is_none() {
            self.unread = self.unread.saturating_sub(1);
            if self.unread == 0 {
                self.purges_of_unread = Vec::new();
            }
        }
        self.tags.remove(combined, entry.generation);
    }

    /// Promises `bytes` to a body being written, unless bodies in flight would then claim
    /// more than half the tier: past that, making room for them would empty the cache of
    /// what people are reading.
    pub(super) fn reserve(&mut self, bytes: u64) -> bool {
        if self.reserved + bytes > self.bounds.max_bytes / 2 {
            return false;
        }
        self.reserved += bytes;
        true
    }

    pub(super) fn release(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }

    /// Whether committed and reserved bytes fit.
    pub(super) fn fits(&self) -> bool {
        self.claimed() <= self.bounds.max_bytes
    }

    /// Takes out least recently used entries until both bounds hold.
    pub(super) fn evict_to_fit(&mut self) -> Vec<Removed> {
        let mut victims = Vec::new();
        while !self.fits() || self.entries.len() > self.bounds.max_entries {
            let Some(victim) = self.entries.pop_lru() else {
                break;
            };
            self.forget(&victim);
            victims.push(victim);
        }
        victims
    }

    /// Calls `visit` on up to `limit` entries in URL-set order after `cursor` (from the
    /// start without one); returns the cursor to go on from, or `None` at the end. Entries
    /// added behind the cursor meanwhile are not visited.
    pub(super) fn walk_chunk(
        &self,
        cursor: Option<UrlKey>,
        limit: usize,
        mut visit: impl FnMut(&Hash, &DiskEntry),
    ) -> Option<UrlKey> {
        let start = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        let mut seen = 0;
        let mut last = None;
        for key in self.by_url.range((start, Bound::Unbounded)).take(limit) {
            if let Some(entry) = self.entries.peek(&key.1) {
                visit(&key.1, entry);
            }
            seen += 1;
            last = Some(*key);
        }
        // A short chunk was the last one.
        last.filter(|_| seen == limit)
    }

    /// What a URL purge did before the URL set: a walk over every entry under the lock.
    /// Kept for the benchmark's comparison.
    #[cfg(test)]
    pub(super) fn remove_url_by_walking_every_entry(&mut self, primary: &Hash) -> Vec<Removed> {
        let doomed: Vec<Hash> = self
            .entries
            .iter()
            .filter(|(_, e)| &e.primary == primary)
            .map(|(combined, _)| *combined)
            .collect();
        doomed
            .iter()
            .filter_map(|combined| self.remove(combined))
            .collect()
    }

    /// Panics unless the URL set, the byte count and the bounds agree with the entries.
    #[cfg(test)]
    pub(super) fn assert_consistent(&self) {
        let from_entries: BTreeSet<UrlKey> = self
            .entries
            .iter()
            .map(|(combined, e)| (e.primary, *combined))
            .collect();
        assert_eq!(from_entries, self.by_url, "URL set and entries disagree");
        let bytes: u64 = self.entries.iter().map(|(_, e)| e.size).sum();
        assert_eq!(bytes, self.used, "byte count and entries disagree");
        let unread = self.entries.iter().filter(|(_, e)| e.url.is_none()).count();
        assert_eq!(unread, self.unread, "unread count and entries disagree");
        self.tags.assert_consistent();
        assert!(
            self.tags.len() <= self.entries.len() - unread,
            "tags of entries gone"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(primary: u8, generation: u64, size: u64) -> DiskEntry {
        DiskEntry {
            primary: [primary; 16],
            generation,
            size,
            url: None,
            touched_secs: 0,
            committed: None,
            checked: None,
        }
    }

    fn variant(primary: u8, n: u8) -> Hash {
        let mut combined = [primary; 16];
        combined[15] = n;
        combined
    }

    fn index(max_bytes: u64, max_entries: usize) -> DiskIndex {
        DiskIndex::new(Bounds {
            max_bytes,
            max_entries,
        })
    }

    #[test]
    fn files_take_whole_blocks() {
        assert_eq!(allocated(0, 4096), 0);
        assert_eq!(allocated(1, 4096), 4096);
        assert_eq!(allocated(4096, 4096), 4096);
        assert_eq!(allocated(4097, 4096), 8192);
        assert_eq!(allocated(300, 512), 512);
    }

    #[test]
    fn a_url_purge_takes_every_variant_of_that_url_and_nothing_else() {
        let mut index = index(u64::MAX, 100);
        for n in 0..3 {
            index.insert(variant(1, n), entry(1, 1, 8192), Box::new([]));
        }
        index.insert(variant(2, 0), entry(2, 1, 8192), Box::new([]));
        // The neighbours in the URL set's order must survive.
        index.insert(variant(0, 0), entry(0, 1, 8192), Box::new([]));
        let removed = index.remove_url(&[1; 16]);
        assert_eq!(removed.len(), 3);
        assert!(removed.iter().all(|(_, e)| e.primary == [1; 16]));
        assert_eq!(index.len(), 2);
        assert_eq!(index.used(), 2 * 8192);
        assert!(index.remove_url(&[1; 16]).is_empty());
        index.assert_consistent();
    }

    #[test]
    fn a_newer_copy_replaces_the_older_and_is_counted_once() {
        let mut index = index(u64::MAX, 100);
        assert!(index
            .insert(variant(1, 0), entry(1, 1, 8192), Box::new([]))
            .is_none());
        let replaced = index.insert(variant(1, 0), entry(1, 2, 12288), Box::new([]));
        assert_eq!(replaced.map(|(_, e)| e.generation), Some(1));
        assert_eq!((index.len(), index.used()), (1, 12288));
        // The same copy again (the scan after an upgrade finds what is indexed): nothing
        // to delete.
        assert!(index
            .insert(variant(1, 0), entry(1, 2, 12288), Box::new([]))
            .is_none());
        // An older generation is not removed by a check against the newer one.
        assert!(index.remove_generation(&variant(1, 0), 1).is_none());
        assert!(index.remove_generation(&variant(1, 0), 2).is_some());
        index.assert_consistent();
    }

    #[test]
    fn eviction_keeps_both_bytes_and_entries_within_bounds() {
        let mut index = index(10 * 8192, 4);
        for n in 0..8 {
            index.insert(variant(n, 0), entry(n, 1, 8192), Box::new([]));
            index.evict_to_fit();
            index.assert_consistent();
        }
        assert_eq!(index.len(), 4);
        // The oldest went first.
        assert!(index.peek(&variant(3, 0)).is_none());
        assert!(index.peek(&variant(4, 0)).is_some());
        let mut index_by_bytes = index_by_bytes_only();
        assert_eq!(index_by_bytes.len(), 3);
        // Bodies in flight count against the bytes.
        assert!(index_by_bytes.reserve(8192));
        index_by_bytes.evict_to_fit();
        assert_eq!(index_by_bytes.len(), 2);
        assert!(index_by_bytes.fits());
        index_by_bytes.assert_consistent();
    }

    fn index_by_bytes_only() -> DiskIndex {
        let mut index = index(3 * 8192, 1000);
        for n in 0..5 {
            index.insert(variant(n, 0), entry(n, 1, 8192), Box::new([]));
            index.evict_to_fit();
        }
        index
    }

    #[test]
    fn bodies_in_flight_claim_at_most_half() {
        let mut index = index(16 * 4096, 1000);
        assert!(index.reserve(8 * 4096));
        assert!(!index.reserve(4096));
        index.release(4096);
        assert!(index.reserve(4096));
    }

    #[test]
    fn a_walk_in_chunks_visits_every_entry_once_while_entries_go() {
        let mut index = index(u64::MAX, 1000);
        for p in 0..50 {
            for n in 0..3 {
                index.insert(variant(p, n), entry(p, 1, 4096), Box::new([]));
            }
        }
        let mut seen = BTreeSet::new();
        let mut cursor = None;
        let mut chunks = 0;
        loop {
            let next = index.walk_chunk(cursor, 16, |combined, _| {
                assert!(seen.insert(*combined), "visited twice");
            });
            chunks += 1;
            // Between chunks the lock is free: a purge and an eviction get in.
            index.remove_url(&[49; 16]);
            index.entries.pop_lru();
            let Some(next) = next else { break };
            cursor = Some(next);
        }
        assert!(chunks >= 150 / 16);
        assert!(seen.len() >= 100, "{} visited", seen.len());
    }

    /// A small deterministic generator, so a failing sequence can be replayed.
    struct Sequence(u64);

    impl Sequence {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    #[test]
    fn inserts_purges_evictions_and_reservations_interleaved_stay_consistent() {
        let mut index = index(64 * 4096, 20);
        let mut steps = Sequence(0x9e37_79b9_7f4a_7c15);
        let mut generation = 0;
        let mut reserved = 0;
        for _ in 0..20_000 {
            let primary = steps.next(16) as u8;
            let combined = variant(primary, steps.next(3) as u8);
            match steps.next(6) {
                0 | 1 => {
                    generation += 1;
                    let size = 4096 * (1 + steps.next(4));
                    index.insert(combined, entry(primary, generation, size), Box::new([]));
                    index.evict_to_fit();
                }
                2 => {
                    index.remove_url(&[primary; 16]);
                }
                3 => {
                    let live = index.peek(&combined).map(|e| e.generation);
                    let guess = live.unwrap_or(0) + steps.next(2);
                    index.remove_generation(&combined, guess);
                }
                4 => {
                    let bytes = 4096 * steps.next(3);
                    if index.reserve(bytes) {
                        reserved += bytes;
                    }
                    index.evict_to_fit();
                }
                _ => {
                    index.release(reserved);
                    reserved = 0;
                    index.resize(&combined, generation, 4096 * (1 + steps.next(2)));
                    index.evict_to_fit();
                }
            }
            index.assert_consistent();
            assert!(index.len() <= 20);
            assert!(index.fits() || index.len() == 0);
        }
    }
}
