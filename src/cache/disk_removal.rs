//! Taking entries out of the disk tier: one object, every variant of a URL, every URL under
//! a prefix (a purge), the least recently used (eviction); the index first, then the files.

use std::fs;
use std::io;
use std::sync::Arc;

use super::disk::{DiskTier, ENTRIES_PER_LOCK};
use super::disk_files::read_meta_file;
use super::disk_index::{DiskIndex, Removed, UrlKey};
use super::Hash;
use crate::metrics;

impl DiskTier {
    /// Removes the entry for `combined`, whatever its generation.
    pub fn remove(&self, combined: &Hash) -> bool {
        let victim = self.index.lock().remove(combined);
        let removed = victim.is_some();
        self.delete_files(victim.as_slice());
        removed
    }

    pub(super) fn remove_generation(&self, combined: &Hash, generation: u64) {
        let victim = self.index.lock().remove_generation(combined, generation);
        self.delete_files(victim.as_slice());
    }

    /// Removes every entry (all variants) of the URL whose hash is `primary`, found through
    /// the index's URL set: the lock is held for those entries only, whatever the tier holds.
    /// Whether any variant of the URL is stored here.
    pub fn holds_url(&self, primary: &Hash) -> bool {
        self.index.lock().has_url(primary)
    }

    pub fn remove_primary(&self, primary: &Hash) -> usize {
        let victims = self.index.lock().remove_url(primary);
        self.delete_files(&victims);
        victims.len()
    }

    /// Removes every entry whose URL starts with `prefix`. URLs are hashed in the index, so
    /// this walks every entry, a chunk at a time with the lock let go in between: hits go on
    /// while it runs. An entry committed behind the walk while it runs is left, which is
    /// right: a fill that began before this purge checks the purge itself when it commits.
    /// Entries not yet read since start have their meta file read (outside the lock) to
    /// learn their URL.
    pub fn remove_prefix(&self, prefix: &str) -> usize {
        let mut cursor: Option<UrlKey> = None;
        let mut removed = 0;
        loop {
            let mut doomed: Vec<(Hash, u64)> = Vec::new();
            let mut unread: Vec<(Hash, Hash, u64)> = Vec::new();
            let next = self
                .index
                .lock()
                .walk_chunk(cursor, ENTRIES_PER_LOCK, |combined, entry| {
                    match &entry.url {
                        Some(url) if url.starts_with(prefix) => {
                            doomed.push((*combined, entry.generation));
                        }
                        Some(_) => {}
                        None => unread.push((*combined, entry.primary, entry.generation)),
                    }
                });
            let mut learnt = Vec::new();
            for (combined, primary, generation) in unread {
                let path = self.entry_path(&primary, &combined, generation, "meta");
                match read_meta_file(&path) {
                    Ok(record) => {
                        if record.url.starts_with(prefix) {
                            doomed.push((combined, generation));
                        }
                        learnt.push((combined, generation, Arc::<str>::from(record.url)));
                    }
                    // An unreadable meta file is damage: its entry goes with the purge.
                    Err(_) => doomed.push((combined, generation)),
                }
            }
            let victims: Vec<Removed> = {
                let mut index = self.index.lock();
                for (combined, generation, url) in learnt {
                    index.learn_url(&combined, generation, url);
                }
                doomed
                    .iter()
                    .filter_map(|(combined, generation)| {
                        index.remove_generation(combined, *generation)
                    })
                    .collect()
            };
            removed += victims.len();
            self.delete_files(&victims);
            match next {
                Some(next) => cursor = Some(next),
                None => return removed,
            }
        }
    }

    /// Takes least recently used entries out until committed and reserved bytes, and the
    /// number of entries, fit.
    pub(super) fn evict_to_fit(&self, index: &mut DiskIndex) -> Vec<Removed> {
        let victims = index.evict_to_fit();
        if !victims.is_empty() {
            metrics::get()
                .cache_tier_evictions
                .with_label_values(&["disk"])
                .inc_by(victims.len() as u64);
        }
        victims
    }

    pub(super) fn delete_files(&self, victims: &[Removed]) {
        for (combined, entry) in victims {
            // The meta file first: without it the entry no longer exists.
            for ext in ["meta", "body"] {
                let path = self.entry_path(&entry.primary, combined, entry.generation, ext);
                if let Err(e) = fs::remove_file(&path) {
                    if e.kind() != io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove cache file");
                    }
                }
            }
        }
    }
}
