//! `cache:`: the memory and disk tiers, the cache lock and stale serving.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;
use crate::config::units::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheFile {
    pub memory: CacheMemoryFile,
    /// Absent: only the memory tier, and objects above its `max_object_size` are not cached.
    pub disk: Option<CacheDiskFile>,
    /// How long a request waits for another request's fetch of the same object before it
    /// goes to the core itself.
    pub lock_timeout: HumanDuration,
    /// A fetch that has held an object's lock this long lets waiting requests compete for it.
    pub lock_age_timeout: HumanDuration,
    /// When the core is down or answers 5xx, cached objects are served stale for this long
    /// past their freshness (unless they say `must-revalidate`); 0s turns it off.
    pub serve_stale_on_error: HumanDuration,
    /// Add `X-Cache-Status` (HIT, MISS, ...) to responses.
    pub status_header: bool,
    /// This PoP's name in the `Cache-Status` entry every response carries (RFC 9211).
    pub status_name: String,
    /// Show the cache key in that entry (for debugging: it reveals how URLs are keyed).
    pub status_key: bool,
    /// How long a response that states no freshness but has `Last-Modified` is kept
    /// (RFC 9111 §4.2.2), on routes that allow it.
    pub heuristic_freshness: HeuristicFreshnessFile,
    /// A cache-control field only edgecache PoPs obey (RFC 9213), before
    /// `CDN-Cache-Control` and `Cache-Control`; removed from responses to clients. Empty:
    /// none.
    pub targeted_field: String,
    /// Obey `CDN-Cache-Control` over `Cache-Control` (RFC 9213).
    pub cdn_cache_control: bool,
    /// What a successful POST, PUT, DELETE (any unsafe method) invalidates (RFC 9111
    /// §4.4): its URL and the `Location` and `Content-Location` on its host, on this PoP
    /// (`local`), on every PoP of the fleet (`fleet`), or nowhere (`off`).
    pub invalidation: InvalidationFile,
    /// Cookies that mark a signed-in user: a request carrying one is never answered from,
    /// nor stored into, the shared cache.
    pub session_cookies: Vec<String>,
    /// Objects on routes that slice (`slice:` of a route; media routes do unless told not
    /// to) are fetched and stored in aligned parts of this size: a range request fetches only
    /// the parts it covers. Unwritten: 1MiB, or the largest object a tier keeps when that
    /// is smaller.
    pub slice_size: Option<ByteSize>,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            memory: CacheMemoryFile::default(),
            disk: None,
            lock_timeout: HumanDuration::from_secs(10),
            lock_age_timeout: HumanDuration::from_secs(30),
            serve_stale_on_error: HumanDuration::from_secs(24 * 3600),
            status_header: true,
            status_name: "edgecache".to_string(),
            status_key: false,
            heuristic_freshness: HeuristicFreshnessFile::default(),
            targeted_field: "Edgecache-Cache-Control".to_string(),
            cdn_cache_control: true,
            invalidation: InvalidationFile::Local,
            session_cookies: ["_session_id", "_mastodon_session", "remember_user_token"]
                .map(String::from)
                .to_vec(),
            slice_size: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidationFile {
    Off,
    Local,
    Fleet,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeuristicFreshnessFile {
    /// The share of the time since `Last-Modified` the response is fresh for; 0 turns
    /// heuristic freshness off.
    pub fraction: f64,
    /// Never longer than this.
    pub max: HumanDuration,
}

impl Default for HeuristicFreshnessFile {
    fn default() -> Self {
        HeuristicFreshnessFile {
            fraction: 0.1,
            max: HumanDuration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheMemoryFile {
    /// Bytes the memory tier holds at most (bodies and headers).
    pub max_size: ByteSize,
    /// Larger objects live on disk only. Unwritten: 1MiB, or `max_size` when smaller.
    pub max_object_size: Option<ByteSize>,
}

impl Default for CacheMemoryFile {
    fn default() -> Self {
        CacheMemoryFile {
            max_size: ByteSize(256 * 1024 * 1024),
            max_object_size: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDiskFile {
    /// A directory edgecache owns; entries survive restarts.
    pub path: PathBuf,
    /// Bytes the entries' files take on the filesystem at most (each file counted in whole
    /// blocks, as `du` counts it); the least recently used objects go first.
    pub max_size: ByteSize,
    /// Larger objects are passed through uncached. Unwritten: 1GiB, or `max_size` when
    /// smaller.
    #[serde(default)]
    pub max_object_size: Option<ByteSize>,
    /// Entries at most: each is two files (two inodes) and a place in the in-memory index.
    #[serde(default = "defaults::disk_max_entries")]
    pub max_entries: u64,
}
