//! The cache lock, closing one gap pingora leaves open.
//!
//! pingora looks an object up in storage and, on a miss, takes the object's lock. With
//! streaming fills the first request releases its lock as soon as the response header is
//! stored, so a second request can miss in storage just before the fill registers and take
//! a fresh lock just after it is released, and fetch the object a second time. This lock
//! looks again once it holds the write lock: when the object is now arriving or stored, it
//! hands back a read lock that is already released, and pingora's retry finds the object.

use pingora::cache::key::CacheHashKey;
use pingora::cache::lock::{CacheKeyLock, CacheLock, LockStatus, Locked, WritePermit};
use pingora::cache::CacheKey;

use super::storage::TieredStorage;

pub struct FillAwareLock {
    inner: Box<CacheLock>,
    storage: &'static TieredStorage,
}

impl FillAwareLock {
    pub fn new(inner: Box<CacheLock>, storage: &'static TieredStorage) -> Self {
        FillAwareLock { inner, storage }
    }
}

impl CacheKeyLock for FillAwareLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        let locked = self.inner.lock(key, stale_writer);
        let Locked::Write(permit) = locked else {
            return locked;
        };
        // A stale writer revalidates an object it already found; nothing to look for.
        if stale_writer || !self.storage.holds(&key.combined_bin()) {
            return Locked::Write(permit);
        }
        // The lock is ours, so this returns a read lock on it; releasing it as done sends
        // that reader straight back to storage.
        let read = self.inner.lock(key, stale_writer);
        self.inner.release(key, permit, LockStatus::Done);
        read
    }

    fn release(&self, key: &CacheKey, permit: WritePermit, reason: LockStatus) {
        self.inner.release(key, permit, reason);
    }
}
