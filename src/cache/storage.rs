//! The two tiers behind pingora's `Storage` trait, and objects still arriving ("fills").
//!
//! A lookup tries, in order: a fill of the object (so requests that arrive while the
//! first one is still fetching read its body as it comes in, from the same spool), the
//! memory tier, then the disk tier. A disk hit small enough for memory is promoted.
//!
//! A fill spools its body to a file under the disk tier's `tmp/` (or to memory when there
//! is no disk tier) while every reader tails it; only when the whole body arrived and
//! matched its `Content-Length` does it become an entry. A fill that is dropped before
//! that (the core went away mid-body) leaves nothing behind, and its readers get an error
//! instead of a short body.

use std::any::Any;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use prometheus::IntCounter;
use tokio::sync::watch;

use super::disk::{DiskObject, DiskTier, TempBody, BLOCK_SIZE, BODY_HEADER_LEN};
use super::memory::{MemObject, MemoryTier};
use super::meta::StoredMeta;
use super::Hash;
use crate::metrics;

pub struct TieredStorage {
    memory: MemoryTier,
    disk: Option<DiskTier>,
    /// Objects still arriving, by combined hash; usually one each, more when a lock timed out.
    fills: Mutex<HashMap<Hash, Vec<Arc<Fill>>>>,
    next_fill: AtomicU64,
    /// Counts purges. Whatever is put into a tier checks it afterwards: when a purge that
    /// matches ran since the copy was read or began arriving, the copy is taken out again,
    /// so a purge racing a fill, a promotion or a refresh cannot be undone by it.
    purges: AtomicU64,
    /// The most recent purges, by count, for that check.
    purge_log: Mutex<std::collections::VecDeque<(u64, PurgeMatch)>>,
}

/// What one purge removed.
enum PurgeMatch {
    Url(Hash),
    Prefix(String),
    Object(Hash),
}

/// Purges remembered for the check above; older ones count as matching everything.
const PURGE_LOG: usize = 1024;

impl TieredStorage {
    pub fn new(memory: MemoryTier, disk: Option<DiskTier>) -> Self {
        TieredStorage {
            memory,
            disk,
            fills: Mutex::new(HashMap::new()),
            next_fill: AtomicU64::new(1),
            purges: AtomicU64::new(0),
            purge_log: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The largest body either tier stores.
    pub fn max_object_size(&self, memory_max_object_size: u64) -> u64 {
        match &self.disk {
            Some(disk) => disk.max_object_size().max(memory_max_object_size),
            None => memory_max_object_size,
        }
    }

    /// Removes every variant of one URL from both tiers; returns how many objects went.
    pub fn purge_url(&self, primary: &Hash) -> usize {
        self.record_purge(PurgeMatch::Url(*primary));
        self.abandon_fills(|fill| &fill.primary == primary);
        let memory = self.memory.remove_matching(|o| &o.primary == primary);
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_primary(primary));
        memory.max(disk)
    }

    /// Removes every object whose URL starts with `prefix` from both tiers.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.record_purge(PurgeMatch::Prefix(prefix.to_string()));
        self.abandon_fills(|fill| fill.url.starts_with(prefix));
        let memory = self.memory.remove_matching(|o| o.url.starts_with(prefix));
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_prefix(prefix));
        memory.max(disk)
    }

    fn record_purge(&self, what: PurgeMatch) {
        let mut log = self.purge_log.lock();
        let seq = self.purges.fetch_add(1, Ordering::SeqCst) + 1;
        if log.len() == PURGE_LOG {
            log.pop_front();
        }
        log.push_back((seq, what));
    }

    /// Whether a purge since count `since` covers this object.
    fn purged_since(&self, since: u64, primary: &Hash, combined: &Hash, url: &str) -> bool {
        if self.purges.load(Ordering::SeqCst) == since {
            return false;
        }
        let log = self.purge_log.lock();
        if log.front().is_some_and(|(oldest, _)| *oldest > since + 1) {
            // Some purges since then are forgotten: assume the worst.
            return true;
        }
        log.iter()
            .filter(|(seq, _)| *seq > since)
            .any(|(_, what)| match what {
                PurgeMatch::Url(p) => p == primary,
                PurgeMatch::Prefix(prefix) => url.starts_with(prefix.as_str()),
                PurgeMatch::Object(c) => c == combined,
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

    fn find_fill(&self, combined: &Hash, id: Option<u64>) -> Option<Arc<Fill>> {
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

    fn lookup_memory(&self, combined: &Hash) -> Option<(CacheMeta, HitHandler)> {
        let object = self.memory.get(combined)?;
        count_hit("memory");
        Some(memory_hit(&object, "memory"))
    }

    fn lookup_disk(&'static self, combined: &Hash) -> Option<(CacheMeta, HitHandler)> {
        let disk = self.disk.as_ref()?;
        let purges = self.purges.load(Ordering::SeqCst);
        let Some(object) = disk.lookup(combined) else {
            metrics::get()
                .cache_tier_misses
                .with_label_values(&["disk"])
                .inc();
            return None;
        };
        if self.memory.admits(object.body_len) {
            // Small enough for memory: read it whole (every block checked) and promote it.
            let body = disk.read_all(&object).ok()?;
            count_hit("disk");
            let promoted = MemObject {
                primary: object.primary,
                url: object.url.clone(),
                meta: object.meta,
                body,
                committed: None,
            };
            let hit = memory_hit(&promoted, "disk");
            let (primary, url) = (promoted.primary, promoted.url.clone());
            self.memory.insert(*combined, promoted);
            if self.purged_since(purges, &primary, combined, &url) {
                self.memory.remove(combined);
            }
            return Some(hit);
        }
        // Check the first block now, so damage there is a clean miss rather than a
        // response that breaks off after its header.
        let first = disk.read_block(&object, 0).ok()?;
        count_hit("disk");
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
            }))),
        ))
    }
}

/// The per-tier counters a hit touches, looked up once rather than on every request.
struct TierCounters {
    hits: IntCounter,
    read_bytes: IntCounter,
}

static TIER_COUNTERS: LazyLock<[TierCounters; 3]> = LazyLock::new(|| {
    let m = metrics::get();
    ["memory", "disk", "fill"].map(|tier| TierCounters {
        hits: m.cache_tier_hits.with_label_values(&[tier]),
        read_bytes: m.cache_tier_read_bytes.with_label_values(&[tier]),
    })
});

static MEMORY_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::get()
        .cache_tier_misses
        .with_label_values(&["memory"])
});

fn tier_counters(tier: &str) -> &'static TierCounters {
    match tier {
        "memory" => &TIER_COUNTERS[0],
        "disk" => &TIER_COUNTERS[1],
        _ => &TIER_COUNTERS[2],
    }
}

fn count_hit(tier: &str) {
    tier_counters(tier).hits.inc();
}

fn memory_hit(object: &MemObject, tier: &'static str) -> (CacheMeta, HitHandler) {
    let body = object.body.clone();
    let end = body.len();
    (
        object.meta.to_cache_meta(),
        Box::new(TieredHit::Memory(MemoryHit {
            body,
            pos: 0,
            end,
            done: false,
            tier,
        })),
    )
}

fn key_hashes(key: &CacheKey) -> (Hash, Hash, Arc<str>) {
    let url = key.primary_key_str().unwrap_or_default();
    (key.primary_bin(), key.combined_bin(), Arc::from(url))
}

fn internal(message: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::InternalError, message.into())
}

/// How far a fill has come; readers wait on changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Writing(u64),
    Done(u64),
    Failed,
}

/// Where a fill's body waits while it arrives.
enum Spool {
    /// The body file under the disk tier's `tmp/`.
    Disk(Arc<std::fs::File>),
    /// Chunks and their offsets, when there is no disk tier.
    Memory(RwLock<Vec<(u64, Bytes)>>),
}

/// An object still arriving.
struct Fill {
    id: u64,
    primary: Hash,
    url: Arc<str>,
    meta: StoredMeta,
    spool: Spool,
    progress: watch::Sender<Progress>,
    /// Purged while arriving: readers finish, but it is never committed.
    abandoned: AtomicBool,
    /// The purge count when it began.
    purges_at_start: u64,
}

impl Fill {
    /// Up to `max` bytes from `pos`, all of which have been written.
    fn read(&self, pos: u64, max: u64) -> Result<Bytes> {
        match &self.spool {
            Spool::Disk(file) => {
                let mut buf = vec![0u8; max as usize];
                file.read_exact_at(&mut buf, BODY_HEADER_LEN + pos)
                    .map_err(|e| internal(format!("reading an arriving body: {e}")))?;
                Ok(Bytes::from(buf))
            }
            Spool::Memory(chunks) => {
                let chunks = chunks.read();
                let at = chunks.partition_point(|(start, _)| *start <= pos);
                let Some((start, chunk)) = at.checked_sub(1).and_then(|i| chunks.get(i)) else {
                    return Err(internal("arriving body has no bytes at this offset"));
                };
                let from = (pos - start) as usize;
                let to = (from + max as usize).min(chunk.len());
                Ok(chunk.slice(from..to))
            }
        }
    }
}

/// Writes one fill; pingora's miss handler.
struct FillWriter {
    storage: &'static TieredStorage,
    fill: Arc<Fill>,
    combined: Hash,
    tag: [u8; 8],
    temp: Option<TempBody>,
    written: u64,
    crcs: Vec<u32>,
    block: crc32fast::Hasher,
    block_len: usize,
    /// A copy for the memory tier while the body is small enough for it.
    memory_copy: Option<Vec<Bytes>>,
    reserved: u64,
    /// The disk tier could not make room: spool on, but do not commit.
    over_budget: bool,
    finished: bool,
}

impl FillWriter {
    fn checksum(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = BLOCK_SIZE - self.block_len;
            let take = room.min(data.len());
            self.block.update(&data[..take]);
            self.block_len += take;
            data = &data[take..];
            if self.block_len == BLOCK_SIZE {
                let full = std::mem::take(&mut self.block);
                self.crcs.push(full.finalize());
                self.block_len = 0;
            }
        }
    }

    fn fail(&mut self) {
        self.fill.progress.send_replace(Progress::Failed);
    }

    /// Commits the complete body to the tiers it belongs in.
    fn commit(&mut self) {
        let storage = self.storage;
        let fill = &self.fill;
        let abandoned = fill.abandoned.load(Ordering::Acquire);
        if let (Some(disk), Some(temp)) = (&storage.disk, self.temp.take()) {
            if abandoned || self.over_budget {
                temp.discard();
            } else if let Err(e) = disk.commit(
                temp,
                std::mem::take(&mut self.reserved),
                &fill.url,
                &fill.primary,
                &self.combined,
                &fill.meta,
                self.written,
                std::mem::take(&mut self.crcs),
            ) {
                tracing::warn!(url = %fill.url, error = %e, "cannot store a cache entry on disk");
            }
        }
        if abandoned {
            return;
        }
        let body = match (&fill.spool, self.memory_copy.take()) {
            (Spool::Memory(chunks), _) => Some(concat(chunks.read().iter().map(|(_, b)| b))),
            (Spool::Disk(_), Some(copy)) => Some(concat(copy.iter())),
            (Spool::Disk(_), None) => None,
        };
        if let Some(body) = body {
            storage.memory.insert(
                self.combined,
                MemObject {
                    primary: fill.primary,
                    url: fill.url.clone(),
                    meta: fill.meta.clone(),
                    body,
                    committed: Some(std::time::Instant::now()),
                },
            );
        }
        // A purge that ran meanwhile may have missed what was just put in: take it out.
        if storage.purged_since(
            fill.purges_at_start,
            &fill.primary,
            &self.combined,
            &fill.url,
        ) {
            storage.memory.remove(&self.combined);
            if let Some(disk) = &storage.disk {
                disk.remove(&self.combined);
            }
        }
    }
}

fn concat<'a>(chunks: impl Iterator<Item = &'a Bytes>) -> Bytes {
    let chunks: Vec<&Bytes> = chunks.collect();
    if chunks.len() == 1 {
        return chunks[0].clone();
    }
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len()).sum());
    for chunk in chunks {
        out.extend_from_slice(chunk);
    }
    Bytes::from(out)
}

#[async_trait]
impl HandleMiss for FillWriter {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        match &self.fill.spool {
            Spool::Disk(file) => {
                if let Some(disk) = &self.storage.disk {
                    if !self.over_budget {
                        if disk.reserve(len) {
                            self.reserved += len;
                        } else {
                            // Never kept: what was reserved so far goes back now.
                            self.over_budget = true;
                            disk.release(std::mem::take(&mut self.reserved));
                        }
                    }
                }
                if let Err(e) = file.write_all_at(&data, BODY_HEADER_LEN + self.written) {
                    self.fail();
                    return Err(internal(format!("writing a cache body: {e}")));
                }
                self.checksum(&data);
                if let Some(copy) = &mut self.memory_copy {
                    if self.storage.memory.admits(self.written + len) {
                        copy.push(data.clone());
                    } else {
                        self.memory_copy = None;
                    }
                }
                metrics::get()
                    .cache_tier_written_bytes
                    .with_label_values(&["disk"])
                    .inc_by(len);
            }
            Spool::Memory(chunks) => {
                chunks.write().push((self.written, data));
                metrics::get()
                    .cache_tier_written_bytes
                    .with_label_values(&["memory"])
                    .inc_by(len);
            }
        }
        self.written += len;
        self.fill
            .progress
            .send_replace(Progress::Writing(self.written));
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        if self.block_len > 0 || self.crcs.is_empty() {
            let last = std::mem::take(&mut self.block);
            self.crcs.push(last.finalize());
            self.block_len = 0;
        }
        if let Some(expected) = self.fill.meta.content_length() {
            if expected != self.written {
                self.fail();
                return Err(internal(format!(
                    "body ended at {} bytes, Content-Length said {expected}",
                    self.written
                )));
            }
        }
        self.commit();
        self.fill
            .progress
            .send_replace(Progress::Done(self.written));
        Ok(MissFinishType::Created(self.written as usize))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if !self.finished || matches!(*self.fill.progress.borrow(), Progress::Failed) {
            self.fail();
        }
        if let Some(temp) = self.temp.take() {
            temp.discard();
        }
        if let Some(disk) = &self.storage.disk {
            disk.release(self.reserved);
        }
        self.storage.remove_fill(&self.combined, self.fill.id);
    }
}

/// A hit from any tier or from a fill; pingora's hit handler.
enum TieredHit {
    Memory(MemoryHit),
    Disk(Box<DiskHit>),
    Partial(PartialHit),
}

struct MemoryHit {
    body: Bytes,
    pos: usize,
    end: usize,
    done: bool,
    tier: &'static str,
}

struct DiskHit {
    disk: &'static DiskTier,
    object: DiskObject,
    /// Block 0, read and checked at lookup.
    first: Option<Bytes>,
    pos: u64,
    end: u64,
}

struct PartialHit {
    fill: Arc<Fill>,
    progress: watch::Receiver<Progress>,
    pos: u64,
    end: Option<u64>,
}

impl DiskHit {
    fn read(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let block = (self.pos / BLOCK_SIZE as u64) as usize;
        let bytes = match (block, self.first.take()) {
            (0, Some(first)) => first,
            (_, first) => {
                self.first = first;
                self.disk
                    .read_block(&self.object, block)
                    .map_err(internal)?
            }
        };
        let block_start = block as u64 * BLOCK_SIZE as u64;
        let from = (self.pos - block_start) as usize;
        let to = (self.end.min(block_start + bytes.len() as u64) - block_start) as usize;
        if from >= to {
            return Err(internal("disk entry is shorter than its meta says"));
        }
        self.pos = block_start + to as u64;
        Ok(Some(bytes.slice(from..to)))
    }
}

impl PartialHit {
    async fn read(&mut self) -> Result<Option<Bytes>> {
        let end = self.end.unwrap_or(u64::MAX);
        loop {
            if self.pos >= end {
                return Ok(None);
            }
            let progress = *self.progress.borrow_and_update();
            let (available, done) = match progress {
                Progress::Writing(n) => (n, false),
                Progress::Done(n) => (n, true),
                Progress::Failed => {
                    return Err(internal("the fetch this response was reading from failed"))
                }
            };
            if self.pos < available {
                let max = (available.min(end) - self.pos).min(BLOCK_SIZE as u64);
                let bytes = self.fill.read(self.pos, max)?;
                self.pos += bytes.len() as u64;
                return Ok(Some(bytes));
            }
            if done {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                return Err(internal(
                    "the fetch this response was reading from vanished",
                ));
            }
        }
    }
}

#[async_trait]
impl HandleHit for TieredHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let (chunk, tier) = match self {
            TieredHit::Memory(hit) => {
                if hit.done || hit.pos >= hit.end {
                    hit.done = true;
                    (None, hit.tier)
                } else {
                    hit.done = true;
                    (Some(hit.body.slice(hit.pos..hit.end)), hit.tier)
                }
            }
            TieredHit::Disk(hit) => (hit.read()?, "disk"),
            TieredHit::Partial(hit) => (hit.read().await?, "fill"),
        };
        if let Some(chunk) = &chunk {
            tier_counters(tier).read_bytes.inc_by(chunk.len() as u64);
        }
        Ok(chunk)
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        match self {
            TieredHit::Memory(_) | TieredHit::Disk(_) => true,
            // A range can wait for its bytes only when the total length is known.
            TieredHit::Partial(hit) => hit.fill.meta.content_length().is_some(),
        }
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let start = start as u64;
        let end = end.map(|e| e as u64);
        match self {
            TieredHit::Memory(hit) => {
                let len = hit.body.len() as u64;
                if start >= len {
                    return Err(internal(format!("seek to {start} past {len} bytes")));
                }
                hit.pos = start as usize;
                hit.end = end.map_or(len, |e| e.min(len)) as usize;
                hit.done = false;
            }
            TieredHit::Disk(hit) => {
                let len = hit.object.body_len;
                if start >= len {
                    return Err(internal(format!("seek to {start} past {len} bytes")));
                }
                hit.pos = start;
                hit.end = end.map_or(len, |e| e.min(len));
            }
            TieredHit::Partial(hit) => {
                let len = hit.fill.meta.content_length().unwrap_or(u64::MAX);
                if start >= len {
                    return Err(internal(format!("seek to {start} past {len} bytes")));
                }
                hit.pos = start;
                hit.end = Some(end.map_or(len, |e| e.min(len)));
            }
        }
        Ok(())
    }

    fn should_count_access(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

fn partial_hit(fill: Arc<Fill>) -> (CacheMeta, HitHandler) {
    let progress = fill.progress.subscribe();
    (
        fill.meta.to_cache_meta(),
        Box::new(TieredHit::Partial(PartialHit {
            fill,
            progress,
            pos: 0,
            end: None,
        })),
    )
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
            count_hit("fill");
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
        let purges_at_start = self.purges.load(Ordering::SeqCst);
        let (progress, _) = watch::channel(Progress::Writing(0));
        let fill = Arc::new(Fill {
            id,
            primary,
            url,
            meta: stored,
            spool,
            progress,
            abandoned: AtomicBool::new(false),
            purges_at_start,
        });
        self.fills
            .lock()
            .entry(combined)
            .or_default()
            .push(fill.clone());
        let memory_copy =
            (temp.is_some() && length.is_none_or(|l| self.memory.admits(l))).then(Vec::new);
        Ok(Box::new(FillWriter {
            storage: self,
            fill,
            combined,
            tag: id.to_be_bytes(),
            temp,
            written: 0,
            crcs: Vec::new(),
            block: crc32fast::Hasher::new(),
            block_len: 0,
            memory_copy,
            reserved: 0,
            over_budget: false,
            finished: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let combined = target.key().combined_bin();
        self.record_purge(PurgeMatch::Object(combined));
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
        let combined = key.combined_bin();
        let purges = self.purges.load(Ordering::SeqCst);
        let stored = StoredMeta::from_cache_meta(meta);
        let memory = self.memory.update_meta(&combined, &stored);
        let (primary, _, url) = key_hashes(key);
        if self.purged_since(purges, &primary, &combined, &url) {
            self.memory.remove(&combined);
        }
        let disk = self
            .disk
            .as_ref()
            .is_some_and(|d| d.update_meta(&combined, &stored));
        Ok(memory || disk)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
