//! Taking entries out of the disk tier: one object, every variant of a URL, every URL under
//! a prefix or with a tag (purges), the least recently used (eviction); the index first,
//! then the files.

use std::fs;
use std::io;
use std::sync::Arc;

use super::disk::{count_late_tag_purges, DiskTier, ENTRIES_PER_LOCK};
use super::disk_files::{read_meta_file, MetaRecord};
use super::disk_index::{DiskEntry, DiskIndex, Removed, UrlKey};
use super::tags::{purge_matches, tag_hash, url_host};
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
    pub fn remove_prefix(&self, prefix: &str) -> usize {
        self.remove_walking(
            |entry| {
                entry
                    .url
                    .as_ref()
                    .is_some_and(|url| url.starts_with(prefix))
            },
            |record| record.url.starts_with(prefix),
        )
    }

    /// Removes every entry tagged `tag` (on `host`, or any host): those filed under it in
    /// the tag index now, and entries not read since start as they are read (the purge is
    /// remembered for them in the same step, so none slips between). Visits only the
    /// entries tagged, unless too many purges wait for unread entries: then it reads them.
    pub fn remove_tagged(&self, tag: &str, host: Option<&str>) -> usize {
        let (victims, walk) = {
            let mut index = self.index.lock();
            let doomed: Vec<(Hash, u64)> = index
                .tagged(tag_hash(tag))
                .into_iter()
                .filter(|(_, entry)| {
                    let url = entry.url.as_deref().unwrap_or_default();
                    host.is_none_or(|h| url_host(url).eq_ignore_ascii_case(h))
                })
                .map(|(combined, entry)| (combined, entry.generation))
                .collect();
            let victims: Vec<Removed> = doomed
                .iter()
                .filter_map(|(combined, generation)| index.remove_generation(combined, *generation))
                .collect();
            (victims, !index.purge_unread(tag, host))
        };
        self.delete_files(&victims);
        let mut removed = victims.len();
        if walk {
            removed += self.remove_walking(
                |_| false,
                |record| purge_matches(&record.meta.tags, &record.url, tag, host),
            );
        }
        removed
    }

    /// Reads the meta files of up to `limit` entries not read since start, from `cursor`
    /// on, so that they are filed by tag (and those a tag purge named since start go);
    /// returns the cursor to go on from (or `None` at the end) and how many of those read
    /// went for a tag purge made since start. Blocking: for a thread of its own, not a
    /// request.
    pub(super) fn read_unread(
        &self,
        cursor: Option<UrlKey>,
        limit: usize,
    ) -> (Option<UrlKey>, usize) {
        let mut unread: Vec<(Hash, Hash, u64)> = Vec::new();
        let next = self
            .index
            .lock()
            .walk_chunk(cursor, limit, |combined, entry| {
                if entry.url.is_none() {
                    unread.push((*combined, entry.primary, entry.generation));
                }
            });
        let mut doomed = Vec::new();
        let learnt = self.read_metas(unread, &mut doomed);
        let (victims, purged_by_tag) = self.learn_and_remove(learnt, &doomed);
        self.delete_files(&victims);
        count_late_tag_purges(purged_by_tag);
        (next, purged_by_tag)
    }

    /// Entries not read since start.
    pub fn unread(&self) -> usize {
        self.index.lock().unread()
    }

    /// Reads the meta files of `unread` entries (outside the lock): what each says, and
    /// in `damaged` those whose file cannot be read.
    fn read_metas(
        &self,
        unread: Vec<(Hash, Hash, u64)>,
        damaged: &mut Vec<(Hash, u64)>,
    ) -> Vec<(Hash, u64, MetaRecord)> {
        let mut learnt = Vec::new();
        for (combined, primary, generation) in unread {
            let path = self.entry_path(&primary, &combined, generation, "meta");
            match read_meta_file(&path) {
                Ok(record) => learnt.push((combined, generation, record)),
                // An unreadable meta file is damage: its entry goes.
                Err(problem) if !problem.not_damage => damaged.push((combined, generation)),
                Err(_) => {}
            }
        }
        learnt
    }

    /// Teaches the index what `learnt` entries hold, then takes out `doomed`; what left the
    /// index, for its files to be deleted, and how many of those a tag purge made since
    /// start named (counted as tag purges here, when they really go).
    fn learn_and_remove(
        &self,
        learnt: Vec<(Hash, u64, MetaRecord)>,
        doomed: &[(Hash, u64)],
    ) -> (Vec<Removed>, usize) {
        let mut index = self.index.lock();
        let mut victims = Vec::new();
        for (combined, generation, record) in learnt {
            let url = Arc::<str>::from(record.url);
            victims.extend(index.learn(&combined, generation, url, &record.meta.tags));
        }
        let purged_by_tag = victims.len();
        victims.extend(
            doomed.iter().filter_map(|(combined, generation)| {
                index.remove_generation(combined, *generation)
            }),
        );
        (victims, purged_by_tag)
    }

    /// Walks every entry and removes those `known` picks (URL known) or, for entries not
    /// read since start, whose meta file `read` picks. The meta files read (outside the
    /// lock) teach the index their entries' URLs and tags.
    fn remove_walking(
        &self,
        known: impl Fn(&DiskEntry) -> bool,
        read: impl Fn(&MetaRecord) -> bool,
    ) -> usize {
        let mut cursor: Option<UrlKey> = None;
        let mut removed = 0;
        loop {
            let mut doomed: Vec<(Hash, u64)> = Vec::new();
            let mut unread: Vec<(Hash, Hash, u64)> = Vec::new();
            let next = self
                .index
                .lock()
                .walk_chunk(cursor, ENTRIES_PER_LOCK, |combined, entry| {
                    if entry.url.is_none() {
                        unread.push((*combined, entry.primary, entry.generation));
                    } else if known(entry) {
                        doomed.push((*combined, entry.generation));
                    }
                });
            let mut learnt = Vec::new();
            let mut damaged = Vec::new();
            for (combined, generation, record) in self.read_metas(unread, &mut damaged) {
                if read(&record) {
                    doomed.push((combined, generation));
                }
                learnt.push((combined, generation, record));
            }
            // An unreadable meta file is damage: its entry goes with the purge.
            doomed.extend(damaged);
            let (victims, purged_by_earlier_tag) = self.learn_and_remove(learnt, &doomed);
            removed += victims.len() - purged_by_earlier_tag;
            count_late_tag_purges(purged_by_earlier_tag);
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
