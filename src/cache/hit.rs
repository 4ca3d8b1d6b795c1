//! Reading a hit: from the memory tier, the disk tier (block by block, each checked), or
//! a fill that is still arriving (waiting for its bytes).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::storage::{HandleHit, HitHandler};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::Result;
use tokio::sync::watch;

use super::disk::{DiskObject, DiskTier};
use super::disk_files::BLOCK_SIZE;
use super::fill::{Fill, Progress};
use super::internal;
use super::memory::MemObject;
use super::tier::Tier;

pub(super) fn memory_hit(object: &MemObject, tier: Tier) -> (CacheMeta, HitHandler) {
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

/// A hit from any tier or from a fill; pingora's hit handler.
pub(super) enum TieredHit {
    Memory(MemoryHit),
    Disk(Box<DiskHit>),
    Partial(PartialHit),
}

pub(super) struct MemoryHit {
    pub(super) body: Bytes,
    pub(super) pos: usize,
    pub(super) end: usize,
    pub(super) done: bool,
    pub(super) tier: Tier,
}

pub(super) struct DiskHit {
    pub(super) disk: &'static DiskTier,
    pub(super) object: DiskObject,
    /// Block 0, read and checked at lookup.
    pub(super) first: Option<Bytes>,
    pub(super) pos: u64,
    pub(super) end: u64,
    /// Blocks read and found good in order from the first: when that is all of them, the
    /// tier learns the copy was checked whole.
    pub(super) checked_blocks: usize,
}

pub(super) struct PartialHit {
    pub(super) fill: Arc<Fill>,
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) pos: u64,
    pub(super) end: Option<u64>,
}

impl DiskHit {
    pub(super) fn read(&mut self) -> Result<Option<Bytes>> {
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
        if block == self.checked_blocks {
            self.checked_blocks += 1;
            if self.checked_blocks == self.object.blocks() {
                self.disk.note_checked(&self.object);
            }
        }
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
    pub(super) async fn read(&mut self) -> Result<Option<Bytes>> {
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
            TieredHit::Disk(hit) => (hit.read()?, Tier::Disk),
            TieredHit::Partial(hit) => (hit.read().await?, Tier::Fill),
        };
        if let Some(chunk) = &chunk {
            tier.counters().read_bytes.inc_by(chunk.len() as u64);
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

pub(super) fn partial_hit(fill: Arc<Fill>) -> (CacheMeta, HitHandler) {
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
