//! Validation of `cache:` (the tiers' sizes and where the disk tier lives, the cache lock,
//! stale serving and the cookies that mark a signed-in user).

use super::Checker;
use crate::config::file;
use crate::config::model::{CachePolicy, CacheSettings, CacheStorage, DiskTierSettings};

pub(super) fn cache(check: &mut Checker, cache: &file::CacheFile) -> CacheSettings {
    let memory = &cache.memory;
    // The memory tier weighs objects in 32-bit units.
    if memory.max_object_size.bytes() > u64::from(u32::MAX) {
        check.problem("cache.memory.max_object_size", "must be below 4GiB");
    }
    if memory.max_object_size > memory.max_size {
        check.problem(
            "cache.memory.max_object_size",
            "must not exceed cache.memory.max_size",
        );
    }
    let disk = cache.disk.as_ref().map(|disk| {
        if disk.max_size.bytes() < 1024 * 1024 {
            check.problem("cache.disk.max_size", "must be at least 1MiB");
        }
        if disk.max_object_size > disk.max_size {
            check.problem(
                "cache.disk.max_object_size",
                "must not exceed cache.disk.max_size",
            );
        }
        if disk.max_entries == 0 {
            check.problem("cache.disk.max_entries", "must be at least 1");
        }
        DiskTierSettings {
            path: check.resolve_path(&disk.path),
            max_size: disk.max_size.bytes(),
            max_object_size: disk.max_object_size.bytes(),
            max_entries: disk.max_entries,
        }
    });
    if cache.lock_timeout.get().is_zero() {
        check.problem("cache.lock_timeout", "must be greater than zero");
    }
    if cache.lock_age_timeout.get().is_zero() {
        check.problem("cache.lock_age_timeout", "must be greater than zero");
    }
    for (i, name) in cache.session_cookies.iter().enumerate() {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
        {
            check.problem(
                &format!("cache.session_cookies[{i}]"),
                format!("{name:?} is not a cookie name"),
            );
        }
    }
    CacheSettings {
        storage: CacheStorage {
            memory_max_size: memory.max_size.bytes(),
            memory_max_object_size: memory.max_object_size.bytes(),
            disk,
            lock_timeout: cache.lock_timeout.get(),
            lock_age_timeout: cache.lock_age_timeout.get(),
        },
        policy: CachePolicy {
            serve_stale_on_error: cache.serve_stale_on_error.get(),
            status_header: cache.status_header,
            session_cookies: cache.session_cookies.clone(),
        },
    }
}
