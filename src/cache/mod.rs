//! The shared cache: key, policy, and the memory and disk tiers behind pingora's cache
//! state machine.
//!
//! pingora drives each request through lookup, the cache lock (one fetch per object however
//! many requests want it), revalidation, stale serving and range cutting; this module gives
//! it what it cannot decide alone: the key (`key`), what may be cached (`policy`), and where
//! objects live (`storage` over `memory` and `disk`). `EdgeCache` holds the long-lived parts,
//! built once at start.

mod codec;
pub mod directives;
pub mod disk;
mod disk_files;
mod disk_index;
#[cfg(test)]
mod disk_index_bench;
mod disk_removal;
#[cfg(test)]
mod disk_tests;
mod fill;
pub mod freshen;
mod hit;
pub mod key;
mod lock;
pub mod memory;
pub mod meta;
pub mod partial;
pub mod policy;
pub mod recent_purges;
pub mod slices;
pub mod status_field;
pub mod storage;
#[cfg(test)]
mod storage_disk_tests;
#[cfg(test)]
mod storage_purge_tests;
#[cfg(test)]
mod storage_tests;
mod tag_index;
pub mod tags;
mod tier;

use std::path::PathBuf;
use std::time::Duration;

use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::CacheHashKey;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::{CacheablePredictor, Predictor};
use pingora::cache::{CacheKey, CacheOptionOverrides, CachePhase, HttpCache};
use pingora::http::ResponseHeader;

use crate::config::model::CacheStorage;
use storage::TieredStorage;

/// A 128-bit key hash, as pingora computes them.
pub type Hash = [u8; 16];

/// An error of ours inside a pingora cache call.
fn internal(message: impl Into<String>) -> Box<pingora::Error> {
    pingora::Error::explain(pingora::ErrorType::InternalError, message.into())
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to use {0} as the disk cache: it is not empty and was not created by edgecache \
         (edgecache deletes files in its cache directory; point cache.disk.path at an empty or new directory)"
    )]
    ForeignDirectory(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("{0:?} is not a URL of the form [https://]host/path")]
    Url(String),
    #[error("{0:?} is not a cache tag: {1}")]
    Tag(String, tags::TagError),
}

/// The primary key hashes `url` is stored under: one per scheme it may have.
fn url_primaries(url: &str) -> Result<Vec<Hash>, PurgeError> {
    split_url(url)?
        .into_iter()
        .map(|(tls, host, rest)| {
            let target = if rest.is_empty() { "/" } else { rest };
            let req = pingora::http::RequestHeader::build("GET", target.as_bytes(), None)
                .map_err(|_| PurgeError::Url(url.to_string()))?;
            Ok(EdgeCache::key(&key::primary_key(tls, &host, &req)).primary_bin())
        })
        .collect()
}

/// Splits `[scheme://]host[/rest]` into the (tls, normalized host, rest) forms to purge.
fn split_url(url: &str) -> Result<Vec<(bool, String, &str)>, PurgeError> {
    let bad = || PurgeError::Url(url.to_string());
    let (schemes, rest): (&[bool], &str) = if let Some(rest) = url.strip_prefix("https://") {
        (&[true], rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (&[false], rest)
    } else {
        (&[true, false], url)
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (host, path) = rest.split_at(split);
    if !path.is_empty() && !path.starts_with('/') {
        return Err(bad());
    }
    schemes
        .iter()
        .map(|&tls| {
            Ok((
                tls,
                crate::wire::normalize_host(host, tls).ok_or_else(bad)?,
                path,
            ))
        })
        .collect()
}

/// How the cache answered a request: the `X-Cache-Status` value and the access-log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    // The order is that of `RESPONSE_COUNTERS`.
    Hit,
    Miss,
    Stale,
    Revalidated,
    Expired,
    Bypass,
}

/// One counter per status, looked up once.
static RESPONSE_COUNTERS: std::sync::LazyLock<[prometheus::IntCounter; 6]> =
    std::sync::LazyLock::new(|| {
        CacheStatus::ALL.map(|s| {
            crate::metrics::get()
                .cache_responses
                .with_label_values(&[s.as_str()])
        })
    });

impl CacheStatus {
    /// Every status, in the order of `RESPONSE_COUNTERS`.
    const ALL: [CacheStatus; 6] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Stale,
        CacheStatus::Revalidated,
        CacheStatus::Expired,
        CacheStatus::Bypass,
    ];

    /// Counts one response with this status.
    pub fn count(self) {
        RESPONSE_COUNTERS[self as usize].inc();
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    /// The status an `X-Cache-Status` value names.
    pub fn from_name(name: &[u8]) -> Option<CacheStatus> {
        CacheStatus::ALL
            .into_iter()
            .find(|status| status.as_str().as_bytes() == name)
    }

    /// The status of a request that used the cache, from pingora's phase.
    pub fn of_phase(phase: CachePhase) -> CacheStatus {
        match phase {
            CachePhase::Hit => CacheStatus::Hit,
            CachePhase::Stale | CachePhase::StaleUpdating => CacheStatus::Stale,
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => CacheStatus::Revalidated,
            CachePhase::Expired => CacheStatus::Expired,
            // Looked up, then fetched from the core: whether or not the answer was stored.
            CachePhase::Miss
            | CachePhase::Bypass
            | CachePhase::Disabled(_)
            | CachePhase::Uninit
            | CachePhase::CacheKey => CacheStatus::Miss,
        }
    }
}

/// The cache's long-lived parts; pingora wants them `'static`.
pub struct EdgeCache {
    pub storage: &'static TieredStorage,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static (dyn CacheablePredictor + Sync),
    max_object_size: usize,
    lock_timeout: Duration,
    /// What was purged here lately, for judging copies a shield answers with.
    pub recent_purges: &'static recent_purges::RecentPurges,
}

impl EdgeCache {
    /// After a graceful upgrade, once the old process is gone: takes into the disk tier's
    /// index what that process wrote after this one opened the directory.
    pub fn adopt_unindexed_disk_entries(&self) -> usize {
        self.storage
            .disk
            .as_ref()
            .map_or(0, |disk| disk.adopt_unindexed())
    }

    /// Starts a thread that reads the meta files of disk entries found at start, a chunk at
    /// a time, so each is filed by tag and a tag purge never has to read them; it looks
    /// again now and then for entries taken in later (after a graceful upgrade).
    pub fn read_unread_disk_entries_in_background(&self) -> std::io::Result<()> {
        let Some(disk) = self.storage.disk.as_ref() else {
            return Ok(());
        };
        std::thread::Builder::new()
            .name("edgecache-disk-read".to_string())
            .spawn(move || loop {
                let started = std::time::Instant::now();
                let before = disk.unread();
                let mut cursor = None;
                while disk.unread() > 0 {
                    (cursor, _) = disk.read_unread(cursor, disk::ENTRIES_PER_LOCK);
                    if cursor.is_none() {
                        break;
                    }
                }
                if before > 0 {
                    tracing::info!(
                        entries = before,
                        left = disk.unread(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "disk cache entries found at start read and filed by tag"
                    );
                }
                std::thread::sleep(Duration::from_secs(10));
            })
            .map(|_| ())
    }

    /// Whether the disk tier would keep the body of this response, by its stated length
    /// (a response without one may outgrow it).
    pub fn disk_tier_keeps(&self, resp: &ResponseHeader) -> bool {
        let Some(disk) = &self.storage.disk else {
            return false;
        };
        crate::wire::content_length(&resp.headers).is_some_and(|len| len <= disk.max_object_size())
    }

    /// Whether the disk tier's body files can be hard-linked into `dir`; `false` without a
    /// disk tier.
    pub fn can_link_bodies_into(&self, dir: &std::path::Path) -> bool {
        self.storage
            .disk
            .as_ref()
            .is_some_and(|disk| disk.can_link_into(dir))
    }

    /// Opens the tiers (the disk tier's index is rebuilt from its directory).
    pub fn open(settings: &CacheStorage) -> Result<EdgeCache, CacheError> {
        let memory =
            memory::MemoryTier::new(settings.memory_max_size, settings.memory_max_object_size);
        let disk = settings
            .disk
            .as_ref()
            .map(disk::DiskTier::open)
            .transpose()?;
        let storage = TieredStorage::new(memory, disk);
        let max_object_size = storage.max_object_size(settings.memory_max_object_size);
        // Process-lifetime singletons: pingora's cache API takes `&'static` references.
        let storage: &'static TieredStorage = Box::leak(Box::new(storage));
        let lock: &'static CacheKeyLockImpl = Box::leak(Box::new(lock::FillAwareLock::new(
            CacheLock::new_boxed(settings.lock_age_timeout),
            storage,
        )));
        let predictor: &'static Predictor<16> = Box::leak(Box::new(Predictor::new(1024, None)));
        Ok(EdgeCache {
            storage,
            lock,
            predictor,
            max_object_size: usize::try_from(max_object_size).unwrap_or(usize::MAX),
            lock_timeout: settings.lock_timeout,
            recent_purges: Box::leak(Box::default()),
        })
    }

    /// Turns the cache on for one request.
    pub fn enable(&self, cache: &mut HttpCache) {
        self.enable_with(cache, Some(self.predictor));
    }

    /// Turns the cache on for the subrequest of one slice. pingora's predictor remembers
    /// uncacheable answers by URL alone, and every slice of an object shares its URL: one
    /// slice's error would make every stored slice of the object bypass the cache. A slice
    /// is looked up whatever another slice's answer was.
    pub fn enable_for_slice(&self, cache: &mut HttpCache) {
        self.enable_with(cache, None);
    }

    fn enable_with(
        &self,
        cache: &mut HttpCache,
        predictor: Option<&'static (dyn CacheablePredictor + Sync)>,
    ) {
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_timeout);
        cache.enable(
            self.storage,
            None::<&'static (dyn EvictionManager + Sync)>,
            predictor,
            Some(self.lock),
            Some(overrides),
        );
        cache.set_max_file_size_bytes(self.max_object_size);
    }

    /// Whether the response's stated length is over what any tier keeps. Saying so before
    /// pingora's own size check keeps the client's `Range` in force: pingora drops it when
    /// it finds the object too large, and would send the whole body to a range request.
    pub fn too_large_to_keep(&self, resp: &ResponseHeader) -> bool {
        crate::wire::content_length(&resp.headers).is_some_and(|len| self.too_large(len))
    }

    /// Whether a body of `len` bytes is over what any tier keeps.
    pub fn too_large(&self, len: u64) -> bool {
        len > self.max_object_size as u64
    }

    /// Removes everything stored under the primary key `primary` (every variant and slice)
    /// from both tiers; how many objects went.
    pub fn purge_key(&self, primary: &str) -> usize {
        let hash = Self::key(primary).primary_bin();
        self.recent_purges.url(hash);
        let purged = self.storage.purge_url(&hash);
        crate::metrics::get()
            .cache_purged_objects
            .with_label_values(&["changed_slices"])
            .inc_by(purged as u64);
        purged
    }

    /// Removes every variant of `url` from both tiers. A URL without a scheme is purged for
    /// both `http` and `https`. Returns how many objects went.
    pub fn purge_url(&self, url: &str) -> Result<usize, PurgeError> {
        let primaries = url_primaries(url)?;
        for primary in &primaries {
            self.recent_purges.url(*primary);
        }
        let purged = primaries
            .iter()
            .map(|primary| self.storage.purge_url(primary))
            .sum();
        crate::metrics::get()
            .cache_purged_objects
            .with_label_values(&["url"])
            .inc_by(purged as u64);
        Ok(purged)
    }

    /// Like [`Self::purge_url`], but only for a URL something is stored or arriving under:
    /// invalidation runs on every successful POST, and a purge of what is not here would
    /// still walk the memory tier and count against fills in flight.
    pub fn invalidate_url(&self, url: &str) -> Result<usize, PurgeError> {
        let primaries = url_primaries(url)?;
        // Remembered even when not stored here: a shield may hold it.
        for primary in &primaries {
            self.recent_purges.url(*primary);
        }
        let purged = primaries
            .iter()
            .filter(|primary| self.storage.holds_url(primary))
            .map(|primary| self.storage.purge_url(primary))
            .sum();
        crate::metrics::get()
            .cache_purged_objects
            .with_label_values(&["invalidation"])
            .inc_by(purged as u64);
        Ok(purged)
    }

    /// Removes every object whose URL starts with `prefix` (scheme optional, as for
    /// [`Self::purge_url`]).
    pub fn purge_prefix(&self, prefix: &str) -> Result<usize, PurgeError> {
        let mut purged = 0;
        for (tls, host, rest) in split_url(prefix)? {
            let scheme = if tls { "https" } else { "http" };
            let prefix = format!("{scheme}://{host}{rest}");
            self.recent_purges.prefix(prefix.clone());
            purged += self.storage.purge_prefix(&prefix);
        }
        crate::metrics::get()
            .cache_purged_objects
            .with_label_values(&["prefix"])
            .inc_by(purged as u64);
        Ok(purged)
    }

    /// Removes every object tagged `tag` from both tiers: on `host` only (as the key spells
    /// hosts: lower case, with a port other than the scheme's), or on every host.
    pub fn purge_tag(&self, tag: &str, host: Option<&str>) -> Result<usize, PurgeError> {
        tags::check_tag(tag).map_err(|e| PurgeError::Tag(tag.to_string(), e))?;
        self.recent_purges.tag(tag, host);
        let purged = self.storage.purge_tag(tag, host);
        crate::metrics::get()
            .cache_purged_objects
            .with_label_values(&["tag"])
            .inc_by(purged as u64);
        Ok(purged)
    }

    /// The pingora key for a primary key string. Its hash is computed once here: pingora
    /// asks for it several times per request.
    pub fn key(primary: &str) -> CacheKey {
        let mut key = CacheKey::new(primary, "");
        let hash = key.primary_bin();
        key.set_primary_bin_override(hash);
        key
    }
}
