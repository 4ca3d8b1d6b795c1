//! Objects still arriving ("fills"): the spool every reader tails, and the writer that
//! turns a complete body into an entry.
//!
//! A fill spools its body to a file under the disk tier's `tmp/` (or to memory when there
//! is no disk tier) while every reader tails it; only when the whole body arrived and
//! matched its `Content-Length` does it become an entry. A fill that is dropped before
//! that (the core went away mid-body) leaves nothing behind, and its readers get an error
//! instead of a short body.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use pingora::cache::storage::{HandleMiss, MissFinishType};
use pingora::Result;
use tokio::sync::watch;

use super::disk::{DiskTier, TempBody, BODY_HEADER_LEN};
use super::disk_files::BLOCK_SIZE;
use super::memory::{MemObject, MemoryTier};
use super::meta::StoredMeta;
use super::tags::Tags;
use super::tier::Tier;
use super::{internal, Hash};
use crate::metrics;

/// What a fill needs of the storage it arrives into: the tiers it commits to, whether a
/// purge ran since it began, and a word when it ends. The storage implements it; a fill
/// knows nothing else of it.
pub(super) trait FillHome: Send + Sync {
    fn memory(&self) -> &MemoryTier;
    fn disk(&self) -> Option<&DiskTier>;
    /// Whether a purge since count `since` covers this object.
    fn purged_since(
        &self,
        since: u64,
        primary: &Hash,
        combined: &Hash,
        url: &str,
        tags: &Tags,
    ) -> bool;
    /// The fill `id` of `combined` is over (committed, failed or dropped).
    fn fill_ended(&self, combined: &Hash, id: u64);
}

/// How far a fill has come; readers wait on changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Writing(u64),
    Done(u64),
    Failed,
}

/// Where a fill's body waits while it arrives.
pub(super) enum Spool {
    /// The body file under the disk tier's `tmp/`.
    Disk(Arc<std::fs::File>),
    /// Chunks and their offsets, when there is no disk tier.
    Memory(RwLock<Vec<(u64, Bytes)>>),
}

/// An object still arriving.
pub(super) struct Fill {
    pub(super) id: u64,
    pub(super) primary: Hash,
    pub(super) url: Arc<str>,
    pub(super) meta: StoredMeta,
    pub(super) spool: Spool,
    pub(super) progress: watch::Sender<Progress>,
    /// Purged while arriving: readers finish, but it is never committed.
    pub(super) abandoned: AtomicBool,
    /// The purge count when it began.
    pub(super) purges_at_start: u64,
}

impl Fill {
    /// An object that begins arriving now; `purges_at_start` is the storage's purge count.
    pub(super) fn new(
        id: u64,
        primary: Hash,
        url: Arc<str>,
        meta: StoredMeta,
        spool: Spool,
        purges_at_start: u64,
    ) -> Fill {
        let (progress, _) = watch::channel(Progress::Writing(0));
        Fill {
            id,
            primary,
            url,
            meta,
            spool,
            progress,
            abandoned: AtomicBool::new(false),
            purges_at_start,
        }
    }

    /// Up to `max` bytes from `pos`, all of which have been written.
    pub(super) fn read(&self, pos: u64, max: u64) -> Result<Bytes> {
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
pub(super) struct FillWriter {
    storage: &'static dyn FillHome,
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
    /// The writer of `fill`, spooling to `temp` when there is a disk tier. With
    /// `keep_memory_copy` the body is also collected for the memory tier while it fits.
    pub(super) fn new(
        storage: &'static dyn FillHome,
        fill: Arc<Fill>,
        combined: Hash,
        temp: Option<TempBody>,
        keep_memory_copy: bool,
    ) -> FillWriter {
        FillWriter {
            storage,
            tag: fill.id.to_be_bytes(),
            fill,
            combined,
            temp,
            written: 0,
            crcs: Vec::new(),
            block: crc32fast::Hasher::new(),
            block_len: 0,
            memory_copy: keep_memory_copy.then(Vec::new),
            reserved: 0,
            over_budget: false,
            finished: false,
        }
    }

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
        if let (Some(disk), Some(temp)) = (storage.disk(), self.temp.take()) {
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
            storage.memory().insert(
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
            &fill.meta.tags,
        ) {
            storage.memory().remove(&self.combined);
            if let Some(disk) = storage.disk() {
                disk.remove(&self.combined);
            }
        }
    }
}

pub(super) fn concat<'a>(chunks: impl Iterator<Item = &'a Bytes>) -> Bytes {
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
                if let Some(disk) = self.storage.disk() {
                    if !self.over_budget {
                        // The body file's blocks, as its entry will be counted.
                        let more = disk
                            .body_allocation(self.written + len)
                            .saturating_sub(self.reserved);
                        if more == 0 || disk.reserve(more) {
                            self.reserved += more;
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
                    if self.storage.memory().admits(self.written + len) {
                        copy.push(data.clone());
                    } else {
                        self.memory_copy = None;
                    }
                }
                metrics::get()
                    .cache_tier_written_bytes
                    .with_label_values(&[Tier::Disk.label()])
                    .inc_by(len);
            }
            Spool::Memory(chunks) => {
                chunks.write().push((self.written, data));
                metrics::get()
                    .cache_tier_written_bytes
                    .with_label_values(&[Tier::Memory.label()])
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
        if let Some(disk) = self.storage.disk() {
            disk.release(self.reserved);
        }
        self.storage.fill_ended(&self.combined, self.fill.id);
    }
}
