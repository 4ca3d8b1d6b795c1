//! The memory tier: small, hot objects whole in memory, on moka.
//!
//! moka weighs each object by its body and header bytes, so `max_size` bounds what the tier
//! holds whatever the mix of sizes, and its TinyLFU admission keeps one-off objects from
//! pushing out the ones people keep asking for. Entries are shared `Arc`s: a hit clones a
//! pointer, never a body.

use std::sync::Arc;

use bytes::Bytes;
use moka::notification::RemovalCause;
use parking_lot::Mutex;

use super::meta::StoredMeta;
use super::tag_index::TagIndex;
use super::tags::{purge_matches, tag_hash};
use super::Hash;
use crate::metrics;

/// One object as the memory tier holds it.
pub struct MemObject {
    /// The hash of the object's URL, shared by all its variants.
    pub primary: Hash,
    pub url: Arc<str>,
    pub meta: StoredMeta,
    pub body: Bytes,
    /// When a fill committed it (`None` for copies promoted from disk).
    pub committed: Option<std::time::Instant>,
}

impl MemObject {
    /// Tells this copy from any other filed in the tag index: its address. A copy is filed
    /// before moka has it and unfiled by moka's eviction listener, which holds it while it
    /// runs, so no two filed copies are ever alive at one address.
    fn version(object: &Arc<MemObject>) -> u64 {
        Arc::as_ptr(object) as usize as u64
    }

    fn weight(&self) -> u32 {
        let bytes = self.body.len() + self.meta.weight() + self.url.len() + 64;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

pub struct MemoryTier {
    objects: moka::sync::Cache<Hash, Arc<MemObject>>,
    max_object_size: u64,
    /// Bytes inserted since moka last weighed and evicted: moka does that in batches of
    /// writes, so a burst of large objects would otherwise sit in memory many times over
    /// `max_size` until the batch fills.
    unweighed: std::sync::atomic::AtomicU64,
    /// Past this many unweighed bytes, an insert has moka catch up at once.
    weigh_every: u64,
    /// The tagged objects held, kept in step by inserts and moka's eviction listener.
    tags: Arc<Mutex<TagIndex>>,
}

impl MemoryTier {
    pub fn new(max_size: u64, max_object_size: u64) -> Self {
        let tags = Arc::new(Mutex::new(TagIndex::default()));
        let index = tags.clone();
        let objects = moka::sync::Cache::builder()
            .max_capacity(max_size)
            .weigher(|_key: &Hash, object: &Arc<MemObject>| object.weight())
            .eviction_listener(move |key: Arc<Hash>, object: Arc<MemObject>, cause| {
                if !object.meta.tags.is_empty() {
                    index.lock().remove(&key, MemObject::version(&object));
                }
                if cause == RemovalCause::Size {
                    metrics::get()
                        .cache_tier_evictions
                        .with_label_values(&["memory"])
                        .inc();
                }
            })
            .build();
        MemoryTier {
            objects,
            max_object_size,
            unweighed: std::sync::atomic::AtomicU64::new(0),
            weigh_every: (max_size / 16).max(1),
            tags,
        }
    }

    /// Whether an object of this size belongs in this tier.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.max_object_size
    }

    pub fn get(&self, combined: &Hash) -> Option<Arc<MemObject>> {
        self.objects.get(combined)
    }

    /// Whether an object is held, without counting as a use of it.
    pub fn contains(&self, combined: &Hash) -> bool {
        self.objects.contains_key(combined)
    }

    pub fn insert(&self, combined: Hash, object: MemObject) {
        use std::sync::atomic::Ordering;
        if !self.admits(object.body.len() as u64) {
            return;
        }
        let weight = u64::from(object.weight());
        let object = Arc::new(object);
        self.file_tags(combined, &object);
        self.objects.insert(combined, object);
        // The tier then holds at most about `max_size` and a sixteenth more.
        let unweighed = self.unweighed.fetch_add(weight, Ordering::AcqRel) + weight;
        if unweighed >= self.weigh_every {
            self.unweighed.store(0, Ordering::Release);
            self.objects.run_pending_tasks();
        }
    }

    /// Files a tagged copy about to be inserted. moka tells the eviction listener of every
    /// copy it held once it goes (replaced, purged, evicted or refused admission), which
    /// unfiles it; filing first means that call always comes after.
    fn file_tags(&self, combined: Hash, object: &Arc<MemObject>) {
        if !object.meta.tags.is_empty() {
            self.tags.lock().insert(
                combined,
                MemObject::version(object),
                object.meta.tags.hashes(),
            );
        }
    }

    /// Replaces the metadata of a held object, keeping its body.
    pub fn update_meta(&self, combined: &Hash, meta: &StoredMeta) -> bool {
        let Some(old) = self.objects.get(combined) else {
            return false;
        };
        let object = Arc::new(MemObject {
            primary: old.primary,
            url: old.url.clone(),
            meta: meta.clone(),
            body: old.body.clone(),
            committed: old.committed,
        });
        self.file_tags(*combined, &object);
        self.objects.insert(*combined, object);
        true
    }

    /// Removes every object tagged `tag` (on `host`, or any host); returns how many went.
    /// Only the objects filed under the tag are looked at.
    pub fn remove_tagged(&self, tag: &str, host: Option<&str>) -> usize {
        let candidates = self.tags.lock().tagged(tag_hash(tag));
        let mut removed = 0;
        for combined in candidates {
            let doomed = self
                .objects
                .get(&combined)
                .is_some_and(|o| purge_matches(&o.meta.tags, &o.url, tag, host));
            if doomed && self.objects.remove(&combined).is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// Tagged objects filed in the tag index.
    pub fn tagged_objects(&self) -> usize {
        self.tags.lock().len()
    }

    pub fn remove(&self, combined: &Hash) -> bool {
        self.objects.remove(combined).is_some()
    }

    /// Removes every object whose URL hash or URL matches; returns how many went.
    pub fn remove_matching(&self, matches: impl Fn(&MemObject) -> bool) -> usize {
        let doomed: Vec<Hash> = self
            .objects
            .iter()
            .filter(|(_, object)| matches(object))
            .map(|(key, _)| *key)
            .collect();
        for key in &doomed {
            self.objects.invalidate(key);
        }
        doomed.len()
    }

    /// Publishes the tier's size to the metrics.
    pub fn report(&self) {
        self.objects.run_pending_tasks();
        let m = metrics::get();
        m.cache_tier_bytes
            .with_label_values(&["memory"])
            .set(i64::try_from(self.objects.weighted_size()).unwrap_or(i64::MAX));
        m.cache_tier_objects
            .with_label_values(&["memory"])
            .set(i64::try_from(self.objects.entry_count()).unwrap_or(i64::MAX));
        m.cache_tier_tagged_objects
            .with_label_values(&["memory"])
            .set(i64::try_from(self.tagged_objects()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::ResponseHeader;

    fn object(len: usize) -> MemObject {
        let header = ResponseHeader::build(200, None).expect("header");
        let now = std::time::SystemTime::now();
        let meta =
            StoredMeta::from_cache_meta(&pingora::cache::CacheMeta::new(now, now, 0, 0, header));
        MemObject {
            primary: [0; 16],
            url: Arc::from("http://example.social/v.mp4"),
            meta,
            body: Bytes::from(vec![7u8; len]),
            committed: None,
        }
    }

    /// What the tier holds right now, counted entry by entry (moka's own count waits for
    /// its housekeeping).
    fn held_bytes(tier: &MemoryTier) -> u64 {
        tier.objects
            .iter()
            .map(|(_, object)| u64::from(object.weight()))
            .sum()
    }

    fn tagged(len: usize, tags: &[&str]) -> MemObject {
        let mut object = object(len);
        object.meta.tags = crate::cache::tags::Tags::new(tags).expect("tags");
        object
    }

    fn filed(tier: &MemoryTier, tag: &str) -> usize {
        tier.tags.lock().tagged(tag_hash(tag)).len()
    }

    #[test]
    fn the_tag_index_files_exactly_the_tagged_objects_the_tier_holds() {
        // Room for a few hundred of the thousands inserted: most are evicted or refused.
        let tier = MemoryTier::new(256 << 10, 64 << 10);
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let tier = &tier;
                move || {
                    for i in 0..2_000u32 {
                        let mut key = [0u8; 16];
                        // Threads share keys, so copies replace each other too.
                        key[..4].copy_from_slice(&(i % 700).to_be_bytes());
                        let tags: &[&str] = if (i + t) % 3 == 0 { &[] } else { &["all", "x"] };
                        tier.insert(key, tagged(300, tags));
                        if i % 50 == 0 {
                            tier.remove(&key);
                        }
                    }
                }
            })
            .collect();
        std::thread::scope(|scope| {
            for thread in threads {
                scope.spawn(thread);
            }
        });
        tier.objects.run_pending_tasks();
        let tagged_held = tier
            .objects
            .iter()
            .filter(|(_, o)| !o.meta.tags.is_empty())
            .count();
        assert!(tagged_held > 0);
        assert_eq!(tier.tagged_objects(), tagged_held);
        assert_eq!(filed(&tier, "all"), tagged_held);
        tier.tags.lock().assert_consistent();
        assert_eq!(tier.remove_tagged("x", Some("other.social")), 0);
        assert_eq!(tier.remove_tagged("x", Some("example.social")), tagged_held);
        tier.objects.run_pending_tasks();
        assert_eq!(tier.tagged_objects(), 0);
        assert_eq!(filed(&tier, "all"), 0);
    }

    #[test]
    fn a_burst_of_large_objects_never_holds_much_more_than_max_size() {
        let max_size = 4 << 20;
        let tier = MemoryTier::new(max_size, 1 << 20);
        let mut most = 0;
        for i in 0..200u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_be_bytes());
            tier.insert(key, object(1 << 20));
            most = most.max(held_bytes(&tier));
        }
        assert!(
            most <= max_size + max_size / 8 + (2 << 20),
            "held {most} bytes with max_size {max_size}"
        );
    }
}
