//! Which stored objects carry which tag, so a purge by tag visits only the objects tagged.
//!
//! Each tier keeps one, in step with what it holds: an object's tags are filed when it is
//! stored and taken out when it goes, by version (the disk tier's generation, the memory
//! tier's copy). Two copies of one object may be filed at once for a moment (one inserted
//! while the other is being replaced), and the removal of one never unfiles the other.
//! Only tagged objects are filed. Its memory is bounded by the tier's: at most
//! [`super::tags::MAX_TAGS`] pairs per copy the tier holds.

use std::collections::{BTreeSet, HashMap};

use super::Hash;

/// One filed copy: its version and its tags' hashes.
type Filed = (u64, Box<[u64]>);

#[derive(Default)]
pub(super) struct TagIndex {
    /// (tag hash, combined hash, version) of every tagged copy.
    pairs: BTreeSet<(u64, Hash, u64)>,
    /// Each object's filed copies (almost always one), to take their pairs out again.
    objects: HashMap<Hash, Vec<Filed>>,
}

impl TagIndex {
    /// Files `version` of the object under `combined` with `tags` (beside any other
    /// version filed; the same version is filed anew).
    pub(super) fn insert(&mut self, combined: Hash, version: u64, tags: Box<[u64]>) {
        self.remove(&combined, version);
        if tags.is_empty() {
            return;
        }
        for tag in tags.iter() {
            self.pairs.insert((*tag, combined, version));
        }
        self.objects
            .entry(combined)
            .or_default()
            .push((version, tags));
    }

    /// Takes `version` of the object under `combined` out, if it is filed.
    pub(super) fn remove(&mut self, combined: &Hash, version: u64) {
        let Some(copies) = self.objects.get_mut(combined) else {
            return;
        };
        let Some(at) = copies.iter().position(|(filed, _)| *filed == version) else {
            return;
        };
        let (_, tags) = copies.swap_remove(at);
        if copies.is_empty() {
            self.objects.remove(combined);
        }
        for tag in tags.iter() {
            self.pairs.remove(&(*tag, *combined, version));
        }
    }

    /// The objects filed under a tag with this hash, each once.
    pub(super) fn tagged(&self, tag: u64) -> Vec<Hash> {
        let mut found: Vec<Hash> = self
            .pairs
            .range((tag, [0u8; 16], 0)..=(tag, [0xff; 16], u64::MAX))
            .map(|(_, combined, _)| *combined)
            .collect();
        found.dedup();
        found
    }

    /// Objects with a tagged copy filed.
    pub(super) fn len(&self) -> usize {
        self.objects.len()
    }

    /// Panics unless the pairs are exactly those of the copies filed.
    #[cfg(test)]
    pub(super) fn assert_consistent(&self) {
        let from_objects: BTreeSet<(u64, Hash, u64)> = self
            .objects
            .iter()
            .flat_map(|(combined, copies)| {
                copies.iter().flat_map(move |(version, tags)| {
                    tags.iter().map(move |t| (*t, *combined, *version))
                })
            })
            .collect();
        assert_eq!(from_objects, self.pairs, "tag pairs and objects disagree");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Hash {
        [n; 16]
    }

    #[test]
    fn an_old_copys_removal_leaves_the_copy_that_replaced_it() {
        let mut index = TagIndex::default();
        index.insert(key(1), 1, Box::new([10, 11]));
        index.insert(key(1), 2, Box::new([11, 12]));
        assert_eq!(index.tagged(11), vec![key(1)]);
        index.remove(&key(1), 1);
        assert_eq!(index.tagged(10), Vec::<Hash>::new());
        assert_eq!(index.tagged(11), vec![key(1)]);
        assert_eq!(index.tagged(12), vec![key(1)]);
        index.remove(&key(1), 2);
        assert_eq!(index.tagged(11), Vec::<Hash>::new());
        assert_eq!(index.len(), 0);
        index.assert_consistent();
    }

    #[test]
    fn copies_removed_in_any_order_leave_nothing_filed() {
        let mut index = TagIndex::default();
        index.insert(key(1), 1, Box::new([10]));
        index.insert(key(1), 2, Box::new([10]));
        index.insert(key(1), 2, Box::new([]));
        assert_eq!(index.tagged(10), vec![key(1)]);
        index.remove(&key(1), 1);
        index.remove(&key(1), 1);
        assert_eq!(index.tagged(10), Vec::<Hash>::new());
        assert_eq!(index.len(), 0);
        index.assert_consistent();
    }

    #[test]
    fn a_tag_finds_each_of_its_objects_and_no_other() {
        let mut index = TagIndex::default();
        for n in 0..100u8 {
            let tags: Box<[u64]> = if n % 2 == 0 {
                Box::new([7, u64::from(n)])
            } else {
                Box::new([u64::MAX])
            };
            index.insert(key(n), 0, tags);
        }
        let even: Vec<Hash> = (0..100u8).step_by(2).map(key).collect();
        assert_eq!(index.tagged(7), even);
        assert_eq!(index.tagged(u64::MAX).len(), 50);
        assert_eq!(index.tagged(8), vec![key(8)]);
        index.assert_consistent();
    }
}
