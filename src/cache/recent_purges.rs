//! What this PoP purged lately, and when: for judging a copy another cache (a shield)
//! answers with. Purges reach the PoPs of a fleet one by one, so a shield may still hold
//! a copy this PoP has already purged; stored here again, that copy would outlive its
//! purge. A copy fetched from its origin before a purge that names it is therefore refused.
//!
//! Bounded: purges older than [`WINDOW`] are forgotten (by then every PoP that can be
//! reached has had them), and at most [`MAX_REMEMBERED`] are kept, the oldest dropped first.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use pingora::cache::key::CacheHashKey;

use super::tags::{purge_matches, Tags};
use super::{EdgeCache, Hash};

/// How long a purge is remembered.
pub const WINDOW: Duration = Duration::from_secs(600);
/// The most purges remembered.
pub const MAX_REMEMBERED: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Named {
    /// Every variant of one URL, by its primary key's hash.
    Url(Hash),
    /// Every URL that starts with this (`scheme://host/path`).
    Prefix(String),
    /// Every object with this tag, on one host or on all.
    Tag { tag: String, host: Option<String> },
}

#[derive(Default)]
pub struct RecentPurges {
    purges: Mutex<VecDeque<(SystemTime, Named)>>,
}

impl RecentPurges {
    pub(super) fn url(&self, primary: Hash) {
        self.note(Named::Url(primary));
    }

    pub(super) fn prefix(&self, prefix: String) {
        self.note(Named::Prefix(prefix));
    }

    pub(super) fn tag(&self, tag: &str, host: Option<&str>) {
        self.note(Named::Tag {
            tag: tag.to_string(),
            host: host.map(str::to_string),
        });
    }

    fn note(&self, named: Named) {
        let mut purges = self.purges.lock();
        // Taken under the lock, so the list stays in time order for `named_since`.
        let now = SystemTime::now();
        while purges.front().is_some_and(|(at, _)| too_old(*at, now))
            || purges.len() >= MAX_REMEMBERED
        {
            purges.pop_front();
        }
        purges.push_back((now, named));
    }

    /// Whether a purge at or after `since` names the object stored under the primary key
    /// `primary` with `tags`.
    pub fn named_since(&self, since: SystemTime, primary: &str, tags: &Tags) -> bool {
        let primary_hash = EdgeCache::key(primary).primary_bin();
        let purges = self.purges.lock();
        purges
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= since)
            .any(|(_, named)| match named {
                Named::Url(hash) => *hash == primary_hash,
                Named::Prefix(prefix) => primary.starts_with(prefix.as_str()),
                Named::Tag { tag, host } => purge_matches(tags, primary, tag, host.as_deref()),
            })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.purges.lock().len()
    }
}

fn too_old(at: SystemTime, now: SystemTime) -> bool {
    now.duration_since(at).is_ok_and(|age| age > WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://example.social/system/a.png";
    const OTHER: &str = "https://example.social/system/b.png";

    fn hash(url: &str) -> Hash {
        EdgeCache::key(url).primary_bin()
    }

    #[test]
    fn a_purge_names_what_was_fetched_before_it_and_not_after() {
        let recent = RecentPurges::default();
        let before = SystemTime::now() - Duration::from_secs(5);
        let tagged = Tags::new(["post-42"]).expect("tags");
        assert!(!recent.named_since(before, URL, &tagged));
        recent.url(hash(URL));
        recent.prefix("https://example.social/emoji/".to_string());
        recent.tag("post-42", Some("example.social"));
        assert!(recent.named_since(before, URL, &Tags::default()));
        assert!(recent.named_since(
            before,
            "https://example.social/emoji/x.png",
            &Tags::default()
        ));
        assert!(recent.named_since(before, OTHER, &tagged));
        // Another URL, another prefix, another host's tag: not named.
        assert!(!recent.named_since(before, OTHER, &Tags::default()));
        assert!(!recent.named_since(before, "https://other.social/system/a.png", &tagged));
        // A copy fetched after the purges is not named by them.
        let after = SystemTime::now() + Duration::from_millis(1);
        assert!(!recent.named_since(after, URL, &tagged));
    }

    #[test]
    fn at_most_the_bound_is_remembered_the_oldest_dropped() {
        let recent = RecentPurges::default();
        let before = SystemTime::now() - Duration::from_secs(5);
        recent.url(hash(URL));
        for n in 0..MAX_REMEMBERED {
            recent.prefix(format!("https://example.social/{n}/"));
        }
        assert_eq!(recent.len(), MAX_REMEMBERED);
        assert!(
            !recent.named_since(before, URL, &Tags::default()),
            "the oldest was kept"
        );
        assert!(recent.named_since(before, "https://example.social/0/x", &Tags::default()));
    }

    #[test]
    fn purges_from_many_threads_are_all_remembered() {
        let recent = std::sync::Arc::new(RecentPurges::default());
        let before = SystemTime::now() - Duration::from_secs(5);
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let recent = recent.clone();
                std::thread::spawn(move || {
                    for n in 0..100u8 {
                        recent.url(hash(&format!("https://example.social/{t}/{n}")));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert_eq!(recent.len(), 400);
        for t in 0..4u8 {
            let url = format!("https://example.social/{t}/99");
            assert!(recent.named_since(before, &url, &Tags::default()));
        }
    }
}
