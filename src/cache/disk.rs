//! The disk tier: every cached object as two files under the cache directory, an LRU index
//! in memory, and a scan at start that rebuilds the index from the files.
//!
//! Layout: `<dir>/v1/<pp>/<primary>-<combined>-<generation>.meta` and `.body`, where
//! `primary` is the hash of the URL, `combined` the hash of the URL and its `Vary` variant,
//! `pp` the first two hex digits of `primary`, and `generation` tells successive copies of
//! one object apart. A body is written under `<dir>/v1/tmp/<pid>/` while it arrives and renamed
//! into place only once complete; the meta file is renamed last, so an entry exists exactly
//! when its meta file does. Every 256 KiB block of a body has a CRC-32 in the meta file and
//! is checked as it is read: a truncated or damaged entry becomes a miss and is removed.
//! The index remembers when a copy was last read whole and found good, for the one reader
//! that sends bodies without reading them (`sendfile` from the connection loop), which
//! relies on a recent check instead.
//!
//! The LRU order survives restarts through the meta files' modification times: a hit
//! touches its meta file at most once a minute, and the start-up scan orders entries by it.
//!
//! The tier is bounded by what it takes on the filesystem, not by the bytes it was handed:
//! each entry counts both its files rounded up to the filesystem's block, and there are at
//! most `max_entries` of them (each costs two inodes). The index, its bounds and the URL set
//! purges go through live in `disk_index.rs`; the file formats and the start-up scan in
//! `disk_files.rs`; taking entries out (purges, eviction) in `disk_removal.rs`.
//!
//! File I/O here is plain blocking calls from the request's thread, the way nginx reads
//! cache files by default: reads and writes land in the page cache and take microseconds.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use super::disk_files::{
    claim_directory, encode_meta_file, filesystem_block, read_meta_file, scan, EntryProblem,
    MetaRecord, BLOCK_SIZE,
};
use super::disk_index::{allocated, Bounds, DiskEntry, DiskIndex, Removed};
use super::meta::StoredMeta;
use super::{CacheError, Hash};
use crate::config::model::DiskTierSettings;
use crate::metrics;

const BODY_MAGIC: &[u8; 8] = b"ECBODY01";
/// The body file starts with its magic and generation.
pub const BODY_HEADER_LEN: u64 = 16;
/// A hit moves an entry's meta file time forward at most this often.
const TOUCH_INTERVAL_SECS: u64 = 60;
/// Work over every entry (a prefix purge, taking in another process's entries) holds the
/// index lock for this many entries at a time and lets go in between, so hits are never
/// held up for the whole walk.
pub const ENTRIES_PER_LOCK: usize = 1024;

pub struct DiskTier {
    root: PathBuf,
    tmp: PathBuf,
    /// The filesystem's allocation unit: every file takes a whole number of these.
    fs_block: u64,
    max_object_size: u64,
    pub(super) index: Mutex<DiskIndex>,
    next_generation: AtomicU64,
}

/// A committed entry opened for reading.
pub struct DiskObject {
    pub url: Arc<str>,
    pub primary: Hash,
    pub combined: Hash,
    pub generation: u64,
    pub meta: StoredMeta,
    pub body_len: u64,
    crcs: Arc<[u32]>,
    file: Arc<File>,
}

impl DiskObject {
    /// How many blocks (each with its checksum) the body has.
    pub fn blocks(&self) -> usize {
        self.crcs.len()
    }

    /// The body file, and where the body starts in it.
    pub fn body_file(&self) -> (&File, u64) {
        (&self.file, BODY_HEADER_LEN)
    }
}

/// A body being written under `tmp/`.
pub struct TempBody {
    pub file: Arc<File>,
    path: PathBuf,
    generation: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DiskTier {
    /// Opens (or creates) the cache directory and rebuilds the index from what is in it.
    pub fn open(settings: &DiskTierSettings) -> Result<DiskTier, CacheError> {
        let base = &settings.path;
        let io_error = |what: &str, path: &Path, e: io::Error| CacheError::Io {
            what: format!("{what} {}", path.display()),
            source: e,
        };
        let root = claim_directory(base)?;
        // Bodies still arriving when their process stopped are never complete; those of
        // a running process (the old one, during a graceful upgrade) are left alone.
        let tmp_root = root.join("tmp");
        let tmp = crate::spool::own_spool(&tmp_root)
            .map_err(|e| io_error("cannot prepare", &tmp_root, e))?;

        let started = std::time::Instant::now();
        let fs_block = filesystem_block(&root);
        let (found, highest_generation) = scan(&root, fs_block, true);
        let mut entries: Vec<(Hash, DiskEntry)> = found.into_iter().collect();
        entries.sort_by_key(|(_, e)| e.touched_secs);
        let mut index = DiskIndex::new(Bounds {
            max_bytes: settings.max_size,
            max_entries: usize::try_from(settings.max_entries).unwrap_or(usize::MAX),
        });
        for (combined, entry) in entries {
            index.insert(combined, entry, Box::new([]));
        }
        let now_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let tier = DiskTier {
            root,
            tmp,
            fs_block,
            max_object_size: settings.max_object_size,
            index: Mutex::new(index),
            next_generation: AtomicU64::new(now_nanos.max(highest_generation + 1)),
        };
        // The bounds may have shrunk since the entries were written.
        let victims = tier.evict_to_fit(&mut tier.index.lock());
        tier.delete_files(&victims);
        {
            let index = tier.index.lock();
            tracing::info!(
                dir = %base.display(),
                objects = index.len(),
                bytes = index.used(),
                fs_block,
                evicted = victims.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "disk cache opened"
            );
        }
        tier.report();
        Ok(tier)
    }

    pub fn max_object_size(&self) -> u64 {
        self.max_object_size
    }

    /// Indexes complete entries in the directory that the index does not know, or knows
    /// in an older copy: those another process (the one this process took over from in a
    /// graceful upgrade) wrote after this one read the directory. Without this, a purge
    /// here would miss them and a restart would serve them again. Deletes nothing but the
    /// copies it supersedes. Returns how many entries were taken in.
    pub fn adopt_unindexed(&self) -> usize {
        let (found, highest_generation) = scan(&self.root, self.fs_block, false);
        self.next_generation
            .fetch_max(highest_generation + 1, Ordering::Relaxed);
        let found: Vec<(Hash, DiskEntry)> = found.into_iter().collect();
        let mut adopted = 0;
        // In chunks, letting go of the lock in between: the scan found every entry.
        for chunk in found.chunks(ENTRIES_PER_LOCK) {
            let mut index = self.index.lock();
            let mut victims = Vec::new();
            for (combined, entry) in chunk {
                let known = index.peek(combined).map(|e| e.generation);
                if known.is_some_and(|known| known >= entry.generation) {
                    continue;
                }
                victims.extend(index.insert(*combined, entry.clone(), Box::new([])));
                adopted += 1;
            }
            victims.extend(self.evict_to_fit(&mut index));
            drop(index);
            self.delete_files(&victims);
        }
        self.report();
        adopted
    }

    pub(super) fn entry_path(
        &self,
        primary: &Hash,
        combined: &Hash,
        generation: u64,
        ext: &str,
    ) -> PathBuf {
        let primary_hex = hex::encode(primary);
        self.root.join(&primary_hex[..2]).join(format!(
            "{primary_hex}-{}-{generation:016x}.{ext}",
            hex::encode(combined)
        ))
    }

    /// Whether an entry for `combined` was committed within `window`.
    pub fn committed_within(&self, combined: &Hash, window: std::time::Duration) -> bool {
        self.index
            .lock()
            .peek(combined)
            .and_then(|e| e.committed)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Whether a body file can be hard-linked into `dir` (the same filesystem, and no mount
    /// point between): tried with a probe file.
    pub fn can_link_into(&self, dir: &Path) -> bool {
        let name = format!(".link-probe-{}", std::process::id());
        let probe = self.tmp.join(&name);
        let linked = dir.join(&name);
        let result = File::create(&probe).and_then(|_| fs::hard_link(&probe, &linked));
        let _ = fs::remove_file(&linked);
        let _ = fs::remove_file(&probe);
        if let Err(e) = &result {
            tracing::info!(dir = %dir.display(), error = %e, "cache body files cannot be linked there; write-through copies are spooled as bodies stream");
        }
        result.is_ok()
    }

    /// Hard-links the body file of the entry for `combined` to `destination` when that
    /// entry was committed at or after `since` (by the fill the caller saw, not an older
    /// copy); returns where the body starts in the file. The index lock is held while
    /// linking, so eviction cannot delete the file in between; afterwards the link keeps
    /// the bytes for its holder whatever becomes of the entry.
    pub fn link_body(
        &self,
        combined: &Hash,
        since: std::time::Instant,
        destination: &Path,
    ) -> io::Result<Option<u64>> {
        let index = self.index.lock();
        let Some(entry) = index.peek(combined) else {
            return Ok(None);
        };
        if entry.committed.is_none_or(|at| at < since) {
            return Ok(None);
        }
        let body = self.entry_path(&entry.primary, combined, entry.generation, "body");
        fs::hard_link(&body, destination)?;
        Ok(Some(BODY_HEADER_LEN))
    }

    /// Opens the committed entry for `combined`, or `None`. A damaged entry is removed and
    /// reported as absent.
    pub fn lookup(&self, combined: &Hash) -> Option<DiskObject> {
        let entry = self.index.lock().get(combined).cloned()?;
        match self.open_entry(combined, &entry) {
            Ok(object) => {
                let touched = {
                    let mut index = self.index.lock();
                    let purged = index.learn(
                        combined,
                        entry.generation,
                        object.url.clone(),
                        &object.meta.tags,
                    );
                    if let Some(purged) = purged {
                        // A tag purge since start named it: gone, as if purged then.
                        drop(index);
                        self.delete_files(&[purged]);
                        count_late_tag_purges(1);
                        return None;
                    }
                    index.touch(combined, entry.generation, now_secs(), TOUCH_INTERVAL_SECS)
                };
                if touched {
                    let meta_path =
                        self.entry_path(&entry.primary, combined, entry.generation, "meta");
                    if let Ok(file) = File::options().write(true).open(&meta_path) {
                        let _ = file.set_modified(SystemTime::now());
                    }
                }
                Some(object)
            }
            Err(problem) => {
                if problem.not_damage {
                    // Evicted or purged between the index look-up and the open, or an I/O
                    // error that says nothing about the entry (out of file descriptors).
                    if !problem.message.is_empty() {
                        tracing::warn!(entry = %hex::encode(combined), error = %problem.message, "cannot read a disk cache entry");
                    }
                    return None;
                }
                tracing::warn!(
                    entry = %hex::encode(combined),
                    problem = %problem.message,
                    "removing a damaged disk cache entry"
                );
                metrics::get().cache_disk_corrupt.inc();
                self.remove_generation(combined, entry.generation);
                None
            }
        }
    }

    fn open_entry(&self, combined: &Hash, entry: &DiskEntry) -> Result<DiskObject, EntryProblem> {
        let meta_path = self.entry_path(&entry.primary, combined, entry.generation, "meta");
        let record = read_meta_file(&meta_path)?;
        if record.generation != entry.generation
            || &record.combined != combined
            || record.primary != entry.primary
        {
            return Err(EntryProblem::damaged("meta file names another entry"));
        }
        let body_path = self.entry_path(&entry.primary, combined, entry.generation, "body");
        let file = File::open(&body_path).map_err(EntryProblem::from_io)?;
        let length = file.metadata().map_err(EntryProblem::from_io)?.len();
        if length != BODY_HEADER_LEN + record.body_len {
            return Err(EntryProblem::damaged(format!(
                "body file has {length} bytes, expected {}",
                BODY_HEADER_LEN + record.body_len
            )));
        }
        let mut head = [0u8; BODY_HEADER_LEN as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(EntryProblem::from_io)?;
        if &head[..8] != BODY_MAGIC || head[8..] != record.generation.to_le_bytes() {
            return Err(EntryProblem::damaged("body file header does not match"));
        }
        Ok(DiskObject {
            url: Arc::from(record.url),
            primary: record.primary,
            combined: *combined,
            generation: record.generation,
            meta: record.meta,
            body_len: record.body_len,
            crcs: Arc::from(record.crcs),
            file: Arc::new(file),
        })
    }

    /// Records that every block of `object`'s body was just read and found good.
    pub fn note_checked(&self, object: &DiskObject) {
        self.index
            .lock()
            .note_checked(&object.combined, object.generation);
    }

    /// Whether every block of this copy's body was read and found good by this process
    /// within `window`: a body sent without passing through the process (`sendfile`) is
    /// not checked as it goes, so it must have been checked lately.
    pub fn checked_within(&self, object: &DiskObject, window: std::time::Duration) -> bool {
        self.index
            .lock()
            .peek(&object.combined)
            .filter(|e| e.generation == object.generation)
            .and_then(|e| e.checked)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Reads and checks one block of a body. A block that fails its checksum removes the
    /// entry.
    pub fn read_block(&self, object: &DiskObject, block: usize) -> Result<Bytes, String> {
        let start = block as u64 * BLOCK_SIZE as u64;
        // An empty body (204, an empty 301) is one empty block.
        let empty = object.body_len == 0 && block == 0;
        if start >= object.body_len && !empty {
            return Err(format!("block {block} is past the end of the body"));
        }
        let len = (object.body_len - start).min(BLOCK_SIZE as u64) as usize;
        let mut buf = vec![0u8; len];
        if let Err(e) = object.file.read_exact_at(&mut buf, BODY_HEADER_LEN + start) {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                return Err(format!("read failed: {e}"));
            }
        }
        // A short read leaves zeros behind, which the checksum catches.
        let expected = object.crcs.get(block).copied();
        let outcome = if expected == Some(crc32fast::hash(&buf)) {
            Ok(())
        } else {
            Err(format!("block {block} fails its checksum"))
        };
        match outcome {
            Ok(()) => Ok(Bytes::from(buf)),
            Err(message) => {
                self.drop_damaged(object, &message);
                Err(message)
            }
        }
    }

    /// Takes out a copy found damaged, and says so.
    pub fn drop_damaged(&self, object: &DiskObject, problem: &str) {
        tracing::warn!(entry = %hex::encode(object.combined), problem = %problem, "removing a damaged disk cache entry");
        metrics::get().cache_disk_corrupt.inc();
        self.remove_generation(&object.combined, object.generation);
    }

    /// Reads a whole (small) body, every block checked.
    pub fn read_all(&self, object: &DiskObject) -> Result<Bytes, String> {
        let blocks = object.crcs.len();
        if blocks == 1 {
            return self.read_block(object, 0);
        }
        let mut out = Vec::with_capacity(object.body_len as usize);
        for block in 0..blocks {
            out.extend_from_slice(&self.read_block(object, block)?);
        }
        Ok(Bytes::from(out))
    }

    /// Starts a body file under `tmp/`.
    pub fn begin_body(&self) -> Result<TempBody, CacheError> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{generation:016x}.body"));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CacheError::Io {
                what: format!("cannot create {}", path.display()),
                source: e,
            })?;
        let mut head = Vec::with_capacity(BODY_HEADER_LEN as usize);
        head.extend_from_slice(BODY_MAGIC);
        head.extend_from_slice(&generation.to_le_bytes());
        file.write_all(&head).map_err(|e| CacheError::Io {
            what: format!("cannot write {}", path.display()),
            source: e,
        })?;
        Ok(TempBody {
            file: Arc::new(file),
            path,
            generation,
        })
    }

    /// What the body file of a body of `body_len` bytes takes on the filesystem: what a
    /// body being written claims, counted the way its entry will be.
    pub fn body_allocation(&self, body_len: u64) -> u64 {
        allocated(BODY_HEADER_LEN + body_len, self.fs_block)
    }

    /// Accounts for `bytes` more of a body being written, evicting to make room. `false`
    /// (the body will not be kept) when bodies in flight already claim half the tier: past
    /// that, making room for them would empty the cache of what people are reading.
    pub fn reserve(&self, bytes: u64) -> bool {
        let mut index = self.index.lock();
        if !index.reserve(bytes) {
            return false;
        }
        let victims = self.evict_to_fit(&mut index);
        let fits = index.fits();
        if !fits {
            index.release(bytes);
        }
        drop(index);
        self.delete_files(&victims);
        fits
    }

    pub fn release(&self, bytes: u64) {
        self.index.lock().release(bytes);
    }

    /// Makes a complete body an entry: writes its meta file, moves both into place and
    /// indexes it, replacing any older copy. `reserved` is what the writer reserved for the
    /// body; it turns into the entry's size in the same step, so nothing is counted twice.
    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        &self,
        body: TempBody,
        reserved: u64,
        url: &Arc<str>,
        primary: &Hash,
        combined: &Hash,
        meta: &StoredMeta,
        body_len: u64,
        crcs: Vec<u32>,
    ) -> Result<(), CacheError> {
        let record = MetaRecord {
            generation: body.generation,
            primary: *primary,
            combined: *combined,
            url: url.to_string(),
            body_len,
            crcs,
            meta: meta.clone(),
        };
        let meta_bytes = encode_meta_file(&record);
        let meta_tmp = self.tmp.join(format!("{:016x}.meta", body.generation));
        let body_path = self.entry_path(primary, combined, body.generation, "body");
        let meta_path = self.entry_path(primary, combined, body.generation, "meta");
        let io = |what: &str, path: &Path, e: io::Error| CacheError::Io {
            what: format!("{what} {}", path.display()),
            source: e,
        };
        let result = (|| {
            fs::write(&meta_tmp, &meta_bytes).map_err(|e| io("cannot write", &meta_tmp, e))?;
            if let Some(dir) = body_path.parent() {
                fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
            }
            fs::rename(&body.path, &body_path).map_err(|e| io("cannot move", &body.path, e))?;
            fs::rename(&meta_tmp, &meta_path).map_err(|e| io("cannot move", &meta_tmp, e))
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&meta_tmp);
            let _ = fs::remove_file(&body.path);
            let _ = fs::remove_file(&body_path);
            self.release(reserved);
            return Err(e);
        }
        let entry = DiskEntry {
            primary: *primary,
            generation: body.generation,
            size: self.entry_allocation(body_len, meta_bytes.len() as u64),
            url: Some(url.clone()),
            touched_secs: now_secs(),
            committed: Some(std::time::Instant::now()),
            checked: None,
        };
        let mut index = self.index.lock();
        index.release(reserved);
        let mut victims: Vec<Removed> = index
            .insert(*combined, entry, meta.tags.hashes())
            .into_iter()
            .collect();
        victims.extend(self.evict_to_fit(&mut index));
        drop(index);
        self.delete_files(&victims);
        Ok(())
    }

    /// What an entry's two files take on the filesystem.
    fn entry_allocation(&self, body_len: u64, meta_len: u64) -> u64 {
        self.body_allocation(body_len) + allocated(meta_len, self.fs_block)
    }

    /// Rewrites an entry's metadata (after a 304 refreshed it); its body stays.
    pub fn update_meta(&self, combined: &Hash, meta: &StoredMeta) -> bool {
        let Some(entry) = self.index.lock().peek(combined).cloned() else {
            return false;
        };
        let meta_path = self.entry_path(&entry.primary, combined, entry.generation, "meta");
        let Ok(mut record) = read_meta_file(&meta_path) else {
            return false;
        };
        record.meta = meta.clone();
        let bytes = encode_meta_file(&record);
        let tmp = self.tmp.join(format!(
            "{:016x}-{:x}.meta",
            entry.generation,
            self.next_generation.fetch_add(1, Ordering::Relaxed)
        ));
        if fs::write(&tmp, &bytes).is_err() {
            let _ = fs::remove_file(&tmp);
            return false;
        }
        // Rename under the index lock, and only while the entry is still this generation:
        // an entry evicted or purged meanwhile must not get its meta file back.
        let mut index = self.index.lock();
        let live = index
            .peek(combined)
            .is_some_and(|e| e.generation == entry.generation);
        if !live || fs::rename(&tmp, &meta_path).is_err() {
            drop(index);
            let _ = fs::remove_file(&tmp);
            return false;
        }
        let size = self.entry_allocation(record.body_len, bytes.len() as u64);
        index.resize(combined, entry.generation, size);
        index.retag(combined, entry.generation, meta.tags.hashes());
        // A longer meta file may have crossed into another block.
        let victims = self.evict_to_fit(&mut index);
        drop(index);
        self.delete_files(&victims);
        true
    }

    /// The index, for tests that check it against the files.
    #[cfg(test)]
    pub(super) fn index_for_tests(&self) -> parking_lot::MutexGuard<'_, DiskIndex> {
        self.index.lock()
    }

    /// Publishes the tier's size to the metrics.
    pub fn report(&self) {
        let (objects, used, tagged) = {
            let index = self.index.lock();
            (index.len(), index.claimed(), index.tagged_entries())
        };
        let m = metrics::get();
        m.cache_tier_bytes
            .with_label_values(&["disk"])
            .set(i64::try_from(used).unwrap_or(i64::MAX));
        m.cache_tier_objects
            .with_label_values(&["disk"])
            .set(i64::try_from(objects).unwrap_or(i64::MAX));
        m.cache_tier_tagged_objects
            .with_label_values(&["disk"])
            .set(i64::try_from(tagged).unwrap_or(i64::MAX));
    }
}

impl TempBody {
    /// Removes the unfinished body file.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Counts entries that a tag purge made while they were unread named, removed as they are
/// read: the purge itself could not count them.
pub(super) fn count_late_tag_purges(removed: usize) {
    if removed > 0 {
        metrics::get()
            .cache_purged_objects
            .with_label_values(&["tag"])
            .inc_by(removed as u64);
    }
}
