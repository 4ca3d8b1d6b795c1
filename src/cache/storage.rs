//! The two tiers behind pingora's `Storage` trait, and objects still arriving ("fills").
//!
//! A lookup tries, in order: a fill of the object (so requests that arrive while the
//! first one is still fetching read its body as it comes in, from the same spool), the
//! memory tier, then the disk tier. A disk hit small enough for memory is promoted.
//!
//! Fills live in `fill.rs`, hit handlers in `hit.rs`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::Result;

use super::disk::{DiskObject, DiskTier};
use super::fill::{Fill, FillHome, FillWriter, Spool};
use super::hit::{memory_hit, partial_hit, DiskHit, TieredHit};
use super::memory::{MemObject, MemoryTier};
use super::meta::StoredMeta;
use super::tags::{purge_matches, Tags};
use super::tier::{Tier, MEMORY_MISSES};
use super::{internal, Hash};
use crate::metrics;

pub struct TieredStorage {
    pub(super) memory: MemoryTier,
    pub(super) disk: Option<DiskTier>,
    /// Objects still arriving, by combined hash; usually one each, more when a lock timed out.
    fills: Mutex<HashMap<Hash, Vec<Arc<Fill>>>>,
    next_fill: AtomicU64,
    /// Counts purges. Whatever is put into a tier checks it afterwards: when a purge that
    /// matches ran since the copy was read or began arriving, the copy is taken out again,
    /// so a purge racing a fill, a promotion or a refresh cannot be undone by it.
    purges: AtomicU64,
    /// The most recent purges, by count, for that check, and the purges still removing.
    purge_log: Mutex<PurgeLog>,
}

/// What one purge removed.
enum PurgeMatch {
    Url(Hash),
    Prefix(String),
    Object(Hash),
    /// A tag, on one host or every host.
    Tag(String, Option<String>),
}

/// Purges remembered for the check above; older ones count as matching everything.
const PURGE_LOG: usize = 1024;

#[derive(Default)]
struct PurgeLog {
    recent: std::collections::VecDeque<(u64, PurgeMatch)>,
    /// Purges that began and have not finished removing: a copy read meanwhile may be one
    /// they are about to remove (or have just removed), so they count as "since" for it.
    in_progress: std::collections::BTreeSet<u64>,
}

/// A purge while it removes; dropped when it is done.
struct PurgeInProgress<'a> {
    storage: &'a TieredStorage,
    seq: u64,
}

impl Drop for PurgeInProgress<'_> {
    fn drop(&mut self) {
        self.storage.purge_log.lock().in_progress.remove(&self.seq);
    }
}

impl TieredStorage {
    pub fn new(memory: MemoryTier, disk: Option<DiskTier>) -> Self {
        TieredStorage {
            memory,
            disk,
            fills: Mutex::new(HashMap::new()),
            next_fill: AtomicU64::new(1),
            purges: AtomicU64::new(0),
            purge_log: Mutex::new(PurgeLog::default()),
        }
    }

    /// The largest body either tier stores.
    pub fn max_object_size(&self, memory_max_object_size: u64) -> u64 {
        match &self.disk {
            Some(disk) => disk.max_object_size().max(memory_max_object_size),
            None => memory_max_object_size,
        }
    }

    /// Whether anything of one URL may be here: arriving, or in either tier's primary slot
    /// (pingora keeps a URL's first variant under its primary key, and others beside it),
    /// or any variant on disk. Cheap: no walk over the memory tier, unlike a purge.
    pub fn holds_url(&self, primary: &Hash) -> bool {
        self.fills
            .lock()
            .values()
            .flatten()
            .any(|fill| &fill.primary == primary && !fill.abandoned.load(Ordering::Acquire))
            || self.memory.contains(primary)
            || self.disk.as_ref().is_some_and(|d| d.holds_url(primary))
    }

    /// Removes every variant of one URL from both tiers; returns how many objects went.
    pub fn purge_url(&self, primary: &Hash) -> usize {
        let _in_progress = self.record_purge(PurgeMatch::Url(*primary));
        self.abandon_fills(|fill| &fill.primary == primary);
        let memory = self.memory.remove_matching(|o| &o.primary == primary);
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_primary(primary));
        memory.max(disk)
    }

    /// Removes every object whose URL starts with `prefix` from both tiers.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let _in_progress = self.record_purge(PurgeMatch::Prefix(prefix.to_string()));
        self.abandon_fills(|fill| fill.url.starts_with(prefix));
        let memory = self.memory.remove_matching(|o| o.url.starts_with(prefix));
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_prefix(prefix));
        memory.max(disk)
    }

    /// Removes every object tagged `tag` (on `host`, or on any host) from both tiers,
    /// through each tier's tag index.
    pub fn purge_tag(&self, tag: &str, host: Option<&str>) -> usize {
        let _in_progress =
            self.record_purge(PurgeMatch::Tag(tag.to_string(), host.map(str::to_string)));
        self.abandon_fills(|fill| purge_matches(&fill.meta.tags, &fill.url, tag, host));
        let memory = self.memory.remove_tagged(tag, host);
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_tagged(tag, host));
        memory.max(disk)
    }

    /// Logs a purge as it begins; it counts as in progress until the guard is dropped.
    fn record_purge(&self, what: PurgeMatch) -> PurgeInProgress<'_> {
        let mut log = self.purge_log.lock();
        let seq = self.purges.fetch_add(1, Ordering::SeqCst) + 1;
        if log.recent.len() == PURGE_LOG {
            log.recent.pop_front();
        }
        log.recent.push_back((seq, what));
        log.in_progress.insert(seq);
        PurgeInProgress { storage: self, seq }
    }

    /// The purge count to check a copy against later: every purge after it may matter,
    /// including one that began earlier and is still removing (its removal may have missed
    /// the copy about to be read, or the copy may be read from what it is about to remove).
    fn purges_before_reading(&self) -> u64 {
        let log = self.purge_log.lock();
        match log.in_progress.first() {
            Some(oldest) => oldest - 1,
            None => self.purges.load(Ordering::SeqCst),
        }
    }

    /// Whether a purge since count `since` covers this object.
    fn purged_since(
        &self,
        since: u64,
        primary: &Hash,
        combined: &Hash,
        url: &str,
        tags: &Tags,
    ) -> bool {
        if self.purges.load(Ordering::SeqCst) == since {
            return false;
        }
        let log = self.purge_log.lock();
        if log
            .recent
            .front()
            .is_some_and(|(oldest, _)| *oldest > since + 1)
        {
            // Some purges since then are forgotten: assume the worst.
            return true;
        }
        log.recent
            .iter()
            .filter(|(seq, _)| *seq > since)
            .any(|(_, what)| match what {
                PurgeMatch::Url(p) => p == primary,
                PurgeMatch::Prefix(prefix) => url.starts_with(prefix.as_str()),
                PurgeMatch::Object(c) => c == combined,
                PurgeMatch::Tag(tag, host) => purge_matches(tags, url, tag, host.as_deref()),
            })
    }

    /// Fills that match are never committed; their readers still get the whole body.
    fn abandon_fills(&self, matches: impl Fn(&Fill) -> bool) {
        for fill in self.fills.lock().values().flatten() {
            if matches(fill) {
                fill.abandoned.store(true, Ordering::Release);
            }
        }
    }

    /// Whether an object under this combined hash is arriving, or was stored a moment ago
    /// (so a request that missed it just before may look again). Older entries do not
    /// count: pingora may have had reasons to pass them over (an outdated Vary variant),
    /// and sending it back to them would never fetch a usable copy.
    pub fn holds(&self, combined: &Hash) -> bool {
        const JUST_NOW: std::time::Duration = std::time::Duration::from_secs(1);
        self.find_fill(combined, None).is_some()
            || self
                .memory
                .get(combined)
                .and_then(|o| o.committed)
                .is_some_and(|at| at.elapsed() < JUST_NOW)
            || self
                .disk
                .as_ref()
                .is_some_and(|d| d.committed_within(combined, JUST_NOW))
    }

    /// Publishes both tiers' sizes to the metrics.
    pub fn report(&self) {
        self.memory.report();
        if let Some(disk) = &self.disk {
            disk.report();
        }
    }

    pub(super) fn find_fill(&self, combined: &Hash, id: Option<u64>) -> Option<Arc<Fill>> {
        let fills = self.fills.lock();
        let candidates = fills.get(combined)?;
        match id {
            Some(id) => candidates.iter().find(|f| f.id == id).cloned(),
            None => candidates
                .iter()
                .rev()
                .find(|f| !f.abandoned.load(Ordering::Acquire))
                .cloned(),
        }
    }

    fn remove_fill(&self, combined: &Hash, id: u64) {
        let mut fills = self.fills.lock();
        if let Some(list) = fills.get_mut(combined) {
            list.retain(|f| f.id != id);
            if list.is_empty() {
                fills.remove(combined);
            }
        }
    }

    /// The object a lookup of `combined` would serve from memory now, when it is still
    /// `expected`: in the memory tier, and with no newer copy arriving. Counted as a memory
    /// hit that reads the whole body, since the caller answers with it.
    pub fn memory_hit_if_current(
        &self,
        combined: &Hash,
        expected: &Weak<MemObject>,
    ) -> Option<Arc<MemObject>> {
        if self.find_fill(combined, None).is_some() {
            return None;
        }
        let object = self.memory.get(combined)?;
        if !std::ptr::eq(Arc::as_ptr(&object), expected.as_ptr()) {
            return None;
        }
        Tier::Memory.count_hit();
        Tier::Memory
            .counters()
            .read_bytes
            .inc_by(object.body.len() as u64);
        Some(object)
    }

    /// The object the memory tier holds under `combined`, without counting a hit.
    pub fn memory_object(&self, combined: &Hash) -> Option<Arc<MemObject>> {
        self.memory.get(combined)
    }

    /// The copy the disk tier holds under `combined`, without counting a hit; `None` when
    /// a lookup would not serve it (the memory tier holds the object, or a copy is arriving).
    pub fn disk_copy(&self, combined: &Hash) -> Option<DiskObject> {
        if self.find_fill(combined, None).is_some() || self.memory.get(combined).is_some() {
            return None;
        }
        self.disk.as_ref()?.lookup(combined)
    }

    /// The copy a lookup of `combined` would serve from disk now, when it is still the
    /// `generation` expected, as `expected` has it, and its body was checked whole within
    /// `checked_within`.
    /// Counted as a disk hit that reads the whole body, since the caller answers with it.
    pub fn disk_hit_if_current(
        &self,
        combined: &Hash,
        generation: u64,
        checked_within: std::time::Duration,
        expected: impl FnOnce(&DiskObject) -> bool,
    ) -> Option<DiskObject> {
        let disk = self.disk.as_ref()?;
        let object = self.disk_copy(combined).filter(|o| {
            o.generation == generation && disk.checked_within(o, checked_within) && expected(o)
        })?;
        Tier::Disk.count_hit();
        Tier::Disk.counters().read_bytes.inc_by(object.body_len);
        Some(object)
    }

    /// Takes out a disk copy found damaged by a reader that does not check blocks.
    pub fn drop_damaged_disk_copy(&self, copy: &DiskObject, problem: &str) {
        if let Some(disk) = &self.disk {
            disk.drop_damaged(copy, problem);
        }
    }

    fn lookup_memory(&self, combined: &Hash) -> Option<(CacheMeta, HitHandler)> {
        let object = self.memory.get(combined)?;
        Tier::Memory.count_hit();
        Some(memory_hit(&object, Tier::Memory))
    }

    fn lookup_disk(&'static self, combined: &Hash) -> Option<(CacheMeta, HitHandler)> {
        let disk = self.disk.as_ref()?;
        let purges = self.purges_before_reading();
        let Some(object) = disk.lookup(combined) else {
            metrics::get()
                .cache_tier_misses
                .with_label_values(&[Tier::Disk.label()])
                .inc();
            return None;
        };
        if self.memory.admits(object.body_len) {
            // Small enough for memory: read it whole (every block checked) and promote it.
            let body = disk.read_all(&object).ok()?;
            Tier::Disk.count_hit();
            let promoted = MemObject {
                primary: object.primary,
                url: object.url.clone(),
                meta: object.meta,
                body,
                committed: None,
            };
            let hit = memory_hit(&promoted, Tier::Disk);
            let (primary, url) = (promoted.primary, promoted.url.clone());
            let tags = promoted.meta.tags.clone();
            self.memory.insert(*combined, promoted);
            if self.purged_since(purges, &primary, combined, &url, &tags) {
                self.memory.remove(combined);
            }
            return Some(hit);
        }
        // Check the first block now, so damage there is a clean miss rather than a
        // response that breaks off after its header.
        let first = disk.read_block(&object, 0).ok()?;
        Tier::Disk.count_hit();
        let meta = object.meta.to_cache_meta();
        let end = object.body_len;
        Some((
            meta,
            Box::new(TieredHit::Disk(Box::new(DiskHit {
                disk,
                object,
                first: Some(first),
                pos: 0,
                end,
                checked_blocks: 0,
            }))),
        ))
    }
}

impl FillHome for TieredStorage {
    fn memory(&self) -> &MemoryTier {
        &self.memory
    }

    fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
    }

    fn purged_since(
        &self,
        since: u64,
        primary: &Hash,
        combined: &Hash,
        url: &str,
        tags: &Tags,
    ) -> bool {
        TieredStorage::purged_since(self, since, primary, combined, url, tags)
    }

    fn fill_ended(&self, combined: &Hash, id: u64) {
        self.remove_fill(combined, id);
    }
}

impl TieredStorage {
    /// Hard-links the disk tier's body file of `key` (committed at or after `since`) to
    /// `destination`; returns where the body starts in it, or `None` when the disk tier
    /// holds no such body.
    pub fn link_committed_body(
        &self,
        key: &CacheKey,
        since: std::time::Instant,
        destination: &std::path::Path,
    ) -> std::io::Result<Option<u64>> {
        match &self.disk {
            Some(disk) => disk.link_body(&key.combined_bin(), since, destination),
            None => Ok(None),
        }
    }

    /// Replaces the metadata of what is stored under `key` in either tier, keeping its
    /// body; `false` when nothing is. A purge that ran meanwhile wins.
    pub fn update_stored_meta(&self, key: &CacheKey, meta: &CacheMeta) -> bool {
        let combined = key.combined_bin();
        let purges = self.purges_before_reading();
        let stored = StoredMeta::from_cache_meta(meta);
        let memory = self.memory.update_meta(&combined, &stored);
        let (primary, _, url) = key_hashes(key);
        if self.purged_since(purges, &primary, &combined, &url, &stored.tags) {
            self.memory.remove(&combined);
        }
        let disk = self
            .disk
            .as_ref()
            .is_some_and(|d| d.update_meta(&combined, &stored));
        memory || disk
    }
}

fn key_hashes(key: &CacheKey) -> (Hash, Hash, Arc<str>) {
    let url = key.primary_key_str().unwrap_or_default();
    (key.primary_bin(), key.combined_bin(), Arc::from(url))
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined_bin();
        // An arriving copy wins: it is newer than anything stored for the same key.
        if let Some(fill) = self.find_fill(&combined, None) {
            Tier::Fill.count_hit();
            return Ok(Some(partial_hit(fill)));
        }
        if let Some(hit) = self.lookup_memory(&combined) {
            return Ok(Some(hit));
        }
        MEMORY_MISSES.inc();
        Ok(self.lookup_disk(&combined))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = streaming_write_tag
            .and_then(|tag| <[u8; 8]>::try_from(tag).ok())
            .map(u64::from_be_bytes);
        if let Some(fill) = id.and_then(|id| self.find_fill(&key.combined_bin(), Some(id))) {
            return Ok(Some(partial_hit(fill)));
        }
        self.lookup(key, trace).await
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (primary, combined, url) = key_hashes(key);
        let stored = StoredMeta::from_cache_meta(meta);
        let length = stored.content_length();
        let temp = match &self.disk {
            Some(disk) => match disk.begin_body() {
                Ok(temp) => Some(temp),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot spool to disk; trying memory");
                    None
                }
            },
            None => None,
        };
        let spool = match &temp {
            Some(temp) => Spool::Disk(temp.file.clone()),
            None => {
                // Without a spool file only a body known to fit the memory tier is kept:
                // pingora bounds bodies by the largest tier, which with a disk tier is far
                // more than memory should hold. (Without one, the bound is the memory
                // tier's own, so a body of unknown length may go ahead.)
                let small = length.map_or(self.disk.is_none(), |l| self.memory.admits(l));
                if !small {
                    return Err(internal(
                        "no spool file and the body is not known to fit the memory tier",
                    ));
                }
                Spool::Memory(RwLock::new(Vec::new()))
            }
        };
        let id = self.next_fill.fetch_add(1, Ordering::Relaxed);
        let purges_at_start = self.purges_before_reading();
        let fill = Arc::new(Fill::new(id, primary, url, stored, spool, purges_at_start));
        self.fills
            .lock()
            .entry(combined)
            .or_default()
            .push(fill.clone());
        let keep_memory_copy = temp.is_some() && length.is_none_or(|l| self.memory.admits(l));
        Ok(Box::new(FillWriter::new(
            self,
            fill,
            combined,
            temp,
            keep_memory_copy,
        )))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let combined = target.key().combined_bin();
        let _in_progress = self.record_purge(PurgeMatch::Object(combined));
        if let Some(list) = self.fills.lock().get(&combined) {
            for fill in list {
                fill.abandoned.store(true, Ordering::Release);
            }
        }
        let memory = self.memory.remove(&combined);
        let disk = self.disk.as_ref().is_some_and(|d| d.remove(&combined));
        Ok(if memory || disk {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        Ok(self.update_stored_meta(key, meta))
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
