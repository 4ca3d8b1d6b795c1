//! What this PoP purged lately, and when: for judging a copy another cache (a shield)
//! answers with. Purges reach the PoPs of a fleet one by one, so a shield may still hold
//! a copy this PoP has already purged; stored here again, that copy would outlive its
//! purge. A copy fetched from its origin before a purge that names it is therefore refused.
//!
//! Bounded: purges older than [`WINDOW`] are forgotten (by then every PoP that can be
//! reached has had them), and at most [`MAX_REMEMBERED`] are kept (of them at most
//! [`MAX_PREFIXES`] prefixes), the oldest dropped first. A check is a lookup by URL and by
//! each of the copy's tags, and a pass over the prefixes.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pingora::cache::key::CacheHashKey;

use super::tags::{url_host, Tags};
use super::{EdgeCache, Hash};

/// How long a purge is remembered.
pub const WINDOW: Duration = Duration::from_secs(600);
/// The most purges remembered.
pub const MAX_REMEMBERED: usize = 65_536;
/// The most prefix purges remembered (each check passes over them).
pub const MAX_PREFIXES: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Named {
    /// Every variant of one URL, by its primary key's hash.
    Url(Hash),
    /// Every URL that starts with this (`scheme://host/path`).
    Prefix(String),
    /// Every object with this tag, on one host (lower case) or on all.
    Tag(String, Option<String>),
}

#[derive(Default)]
struct Remembered {
    /// Every purge, oldest first, for forgetting them in order.
    order: VecDeque<(Instant, Named)>,
    /// When each URL or tag purge was last made.
    latest: HashMap<Named, Instant>,
    /// The prefix purges, oldest first.
    prefixes: VecDeque<(Instant, String)>,
    newest: Option<Instant>,
}

#[derive(Default)]
pub struct RecentPurges {
    remembered: Mutex<Remembered>,
}

impl RecentPurges {
    pub(super) fn url(&self, primary: Hash) {
        self.note(Named::Url(primary));
    }

    pub(super) fn prefix(&self, prefix: String) {
        self.note(Named::Prefix(prefix));
    }

    pub(super) fn tag(&self, tag: &str, host: Option<&str>) {
        self.note(Named::Tag(
            tag.to_string(),
            host.map(str::to_ascii_lowercase),
        ));
    }

    fn note(&self, named: Named) {
        let mut r = self.remembered.lock();
        let now = Instant::now();
        let prefixes_full = matches!(named, Named::Prefix(_)) && r.prefixes.len() >= MAX_PREFIXES;
        if prefixes_full {
            r.prefixes.pop_front();
        }
        while r
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
            || r.order.len() >= MAX_REMEMBERED
        {
            let Some((at, old)) = r.order.pop_front() else {
                break;
            };
            r.forget(at, &old);
        }
        match &named {
            Named::Prefix(prefix) => r.prefixes.push_back((now, prefix.clone())),
            other => {
                r.latest.insert(other.clone(), now);
            }
        }
        r.order.push_back((now, named));
        r.newest = Some(now);
    }

    /// Whether a purge at or after `since` (`None`: before anything remembered) names the
    /// object stored under the primary key `primary` with `tags`.
    pub fn named_since(&self, since: Option<Instant>, primary: &str, tags: &Tags) -> bool {
        let r = self.remembered.lock();
        let after = |at: Instant| since.is_none_or(|since| at >= since);
        if !r.newest.is_some_and(after) {
            return false;
        }
        let recent = |named: &Named| r.latest.get(named).is_some_and(|at| after(*at));
        let hash = EdgeCache::key(primary).primary_bin();
        if recent(&Named::Url(hash)) {
            return true;
        }
        if r.prefixes
            .iter()
            .any(|(at, prefix)| after(*at) && primary.starts_with(prefix.as_str()))
        {
            return true;
        }
        let host = url_host(primary).to_ascii_lowercase();
        tags.iter().any(|tag| {
            recent(&Named::Tag(tag.to_string(), None))
                || recent(&Named::Tag(tag.to_string(), Some(host.clone())))
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.remembered.lock().order.len()
    }
}

impl Remembered {
    /// Forgets a purge leaving the window, unless the same was made again since.
    fn forget(&mut self, at: Instant, named: &Named) {
        match named {
            Named::Prefix(prefix) => {
                if self
                    .prefixes
                    .front()
                    .is_some_and(|(first, p)| *first == at && p == prefix)
                {
                    self.prefixes.pop_front();
                }
            }
            other => {
                if self.latest.get(other) == Some(&at) {
                    self.latest.remove(other);
                }
            }
        }
    }
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
        let before = Instant::now();
        let tagged = Tags::new(["post-42"]).expect("tags");
        assert!(!recent.named_since(Some(before), URL, &tagged));
        recent.url(hash(URL));
        recent.prefix("https://example.social/emoji/".to_string());
        recent.tag("post-42", Some("example.social"));
        assert!(recent.named_since(Some(before), URL, &Tags::default()));
        assert!(recent.named_since(
            Some(before),
            "https://example.social/emoji/x.png",
            &Tags::default()
        ));
        assert!(recent.named_since(Some(before), OTHER, &tagged));
        // Another URL, another prefix, another host's tag: not named.
        assert!(!recent.named_since(Some(before), OTHER, &Tags::default()));
        assert!(!recent.named_since(Some(before), "https://other.social/system/a.png", &tagged));
        // A copy fetched after the purges is not named by them.
        std::thread::sleep(Duration::from_millis(2));
        let after = Instant::now();
        assert!(!recent.named_since(Some(after), URL, &tagged));
    }

    #[test]
    fn at_most_the_bound_is_remembered_the_oldest_dropped() {
        let recent = RecentPurges::default();
        let before = Instant::now();
        recent.url(hash(URL));
        for n in 1..MAX_REMEMBERED {
            recent.url(hash(&format!("https://example.social/{n}")));
        }
        assert_eq!(recent.len(), MAX_REMEMBERED);
        assert!(
            recent.named_since(Some(before), URL, &Tags::default()),
            "dropped too early"
        );
        // One more: the first goes. Purged again, a URL is remembered from the new time.
        recent.url(hash("https://example.social/1"));
        assert_eq!(recent.len(), MAX_REMEMBERED);
        assert!(
            !recent.named_since(Some(before), URL, &Tags::default()),
            "the oldest was kept"
        );
        recent.url(hash("https://example.social/one-more"));
        assert!(
            recent.named_since(Some(before), "https://example.social/1", &Tags::default()),
            "a URL purged again was dropped with its first purge"
        );
        // Prefixes have a bound of their own.
        for n in 0..=MAX_PREFIXES {
            recent.prefix(format!("https://example.social/p{n}/"));
        }
        assert!(!recent.named_since(
            Some(before),
            "https://example.social/p0/x",
            &Tags::default()
        ));
        assert!(recent.named_since(
            Some(before),
            "https://example.social/p1/x",
            &Tags::default()
        ));
    }

    #[test]
    fn purges_from_many_threads_are_all_remembered() {
        let recent = std::sync::Arc::new(RecentPurges::default());
        let before = Instant::now();
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
            assert!(recent.named_since(Some(before), &url, &Tags::default()));
        }
    }
}
