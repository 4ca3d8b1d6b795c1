//! Validation of `cache:` (the tiers' sizes and where the disk tier lives, the cache lock,
//! stale serving and the cookies that mark a signed-in user).

use super::Checker;
use crate::config::file::{self, defaults};
use crate::config::model::{
    CachePolicy, CacheSettings, CacheStorage, DiskTierSettings, HeuristicFreshness, Invalidation,
};
use crate::config::units::ByteSize;

pub(super) fn cache(check: &mut Checker, cache: &file::CacheFile) -> CacheSettings {
    let memory = &cache.memory;
    let memory_max_object_size = max_object_size(
        check,
        "cache.memory",
        memory.max_object_size,
        defaults::memory_max_object_size(),
        memory.max_size,
    );
    // The memory tier weighs objects in 32-bit units.
    if memory_max_object_size > u64::from(u32::MAX) {
        check.problem("cache.memory.max_object_size", "must be below 4GiB");
    }
    let disk = cache.disk.as_ref().map(|disk| {
        if disk.max_size.bytes() < 1024 * 1024 {
            check.problem("cache.disk.max_size", "must be at least 1MiB");
        }
        let max_object_size = max_object_size(
            check,
            "cache.disk",
            disk.max_object_size,
            defaults::disk_max_object_size(),
            disk.max_size,
        );
        if disk.max_entries == 0 {
            check.problem("cache.disk.max_entries", "must be at least 1");
        }
        DiskTierSettings {
            path: check.resolve_path(&disk.path),
            max_size: disk.max_size.bytes(),
            max_object_size,
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
    if cache.status_name.is_empty()
        || !cache
            .status_name
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
    {
        check.problem("cache.status_name", "must be printable ASCII and not empty");
    }
    let heuristic = &cache.heuristic_freshness;
    if !(0.0..=1.0).contains(&heuristic.fraction) {
        check.problem(
            "cache.heuristic_freshness.fraction",
            "must be between 0 and 1",
        );
    }
    let heuristic = (heuristic.fraction > 0.0 && !heuristic.max.get().is_zero()).then_some(
        HeuristicFreshness {
            fraction: heuristic.fraction.min(1.0),
            max: heuristic.max.get(),
        },
    );
    let own_targeted_field = if cache.targeted_field.is_empty() {
        None
    } else {
        match http::HeaderName::from_bytes(cache.targeted_field.as_bytes()) {
            Ok(name) if !FIELDS_NOT_TARGETED.contains(&name.as_str()) => Some(name),
            _ => {
                check.problem(
                    "cache.targeted_field",
                    format!("{:?} is not a field name of its own", cache.targeted_field),
                );
                None
            }
        }
    };
    let mut targeted_fields: Vec<http::HeaderName> = own_targeted_field.iter().cloned().collect();
    if cache.cdn_cache_control {
        targeted_fields.push(http::HeaderName::from_static("cdn-cache-control"));
    }
    let largest = disk
        .as_ref()
        .map_or(memory_max_object_size, |d: &DiskTierSettings| {
            d.max_object_size.max(memory_max_object_size)
        });
    let slice_bytes = match cache.slice_size {
        Some(size) => {
            slice_size(check, "cache.slice_size", size.bytes(), Some(largest));
            size.bytes()
        }
        None => DEFAULT_SLICE_SIZE.min(largest),
    };
    CacheSettings {
        storage: CacheStorage {
            memory_max_size: memory.max_size.bytes(),
            memory_max_object_size,
            disk,
            lock_timeout: cache.lock_timeout.get(),
            lock_age_timeout: cache.lock_age_timeout.get(),
        },
        policy: CachePolicy {
            serve_stale_on_error: cache.serve_stale_on_error.get(),
            status_header: cache.status_header,
            status_name: cache.status_name.clone(),
            status_key: cache.status_key,
            session_cookies: cache.session_cookies.clone(),
            heuristic,
            targeted_fields,
            own_targeted_field,
            invalidation: match cache.invalidation {
                file::InvalidationFile::Off => Invalidation::Off,
                file::InvalidationFile::Local => Invalidation::Local,
                file::InvalidationFile::Fleet => Invalidation::Fleet,
            },
            slice_size: slice_bytes,
        },
    }
}

/// `cache.slice_size` when unwritten (and every tier keeps objects this large).
const DEFAULT_SLICE_SIZE: u64 = 1024 * 1024;

/// The smallest and largest slice sizes: below, the requests per byte cost more than the
/// bytes they save; above, a small range fetches most of a video again.
const SLICE_SIZES: std::ops::RangeInclusive<u64> = 64 * 1024..=64 * 1024 * 1024;

/// Checks a slice size written at `key`: within [`SLICE_SIZES`], and a slice must fit the
/// largest object a tier keeps (`largest`, when there is a cache), or none would be kept.
pub(super) fn slice_size(check: &mut Checker, key: &str, size: u64, largest: Option<u64>) {
    if !SLICE_SIZES.contains(&size) {
        check.problem(key, "must be between 64KiB and 64MiB");
    } else if largest.is_some_and(|largest| size > largest) {
        check.problem(
            key,
            "must not be larger than the largest object a cache tier keeps (max_object_size)",
        );
    }
}

/// Fields that cannot be our own targeted field: they mean something else to every cache.
const FIELDS_NOT_TARGETED: [&str; 4] = ["cache-control", "cdn-cache-control", "expires", "pragma"];

/// A tier's largest object: as written, which must fit the tier, or unwritten, the default
/// or the tier's whole size when that is smaller (a small tier is no error about a key the
/// user never wrote).
fn max_object_size(
    check: &mut Checker,
    tier: &str,
    written: Option<ByteSize>,
    default: ByteSize,
    max_size: ByteSize,
) -> u64 {
    match written {
        Some(written) => {
            if written > max_size {
                check.problem(
                    &format!("{tier}.max_object_size"),
                    format!("must not exceed {tier}.max_size"),
                );
            }
            written.bytes()
        }
        None => default.min(max_size).bytes(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn storage(cache_section: &str) -> crate::config::model::CacheStorage {
        let text = format!(
            "listeners:\n  - {{ name: http, address: \"127.0.0.1:0\" }}\n\
             core:\n  groups:\n    web: {{ hosts: [\"127.0.0.1:3000\"] }}\n\
             cache:\n{cache_section}"
        );
        let config = crate::config::parse(&text, Path::new("edgecache.yaml"))
            .unwrap_or_else(|e| panic!("the config loads: {e}"));
        config.cache.expect("a cache section").storage
    }

    #[test]
    fn an_unwritten_max_object_size_follows_a_smaller_max_size() {
        let small = storage(
            "  memory: { max_size: 512KiB }\n  disk: { path: /tmp/edgecache-test, max_size: 100MiB }\n",
        );
        assert_eq!(small.memory_max_object_size, 512 * 1024);
        let disk = small.disk.expect("a disk tier");
        assert_eq!(disk.max_object_size, 100 * 1024 * 1024);
    }

    #[test]
    fn an_unwritten_max_object_size_keeps_its_default_under_a_larger_max_size() {
        let large = storage(
            "  memory: { max_size: 1GiB }\n  disk: { path: /tmp/edgecache-test, max_size: 50GiB }\n",
        );
        assert_eq!(large.memory_max_object_size, 1024 * 1024);
        let disk = large.disk.expect("a disk tier");
        assert_eq!(disk.max_object_size, 1024 * 1024 * 1024);
    }

    fn policy(cache_section: &str) -> Result<crate::config::model::CachePolicy, String> {
        let text = format!(
            "listeners:\n  - {{ name: http, address: \"127.0.0.1:0\" }}\n\
             core:\n  groups:\n    web: {{ hosts: [\"127.0.0.1:3000\"] }}\n\
             cache:\n{cache_section}"
        );
        crate::config::parse(&text, Path::new("edgecache.yaml"))
            .map(|config| config.cache.expect("a cache section").policy)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn heuristic_freshness_is_on_by_default_and_a_fraction_outside_0_to_1_is_an_error() {
        let default = policy("  status_header: true\n").expect("loads");
        let heuristic = default.heuristic.expect("on by default");
        assert_eq!(
            (heuristic.fraction, heuristic.max.as_secs()),
            (0.1, 24 * 3600)
        );
        let off = policy("  heuristic_freshness: { fraction: 0 }\n").expect("loads");
        assert!(off.heuristic.is_none());
        let error = policy("  heuristic_freshness: { fraction: 1.5 }\n").expect_err("refused");
        assert!(
            error.contains("edgecache.yaml:7")
                && error.contains("cache.heuristic_freshness.fraction"),
            "{error}"
        );
    }

    #[test]
    fn a_targeted_field_or_status_name_that_cannot_be_one_is_an_error() {
        for (section, key) in [
            (
                "  targeted_field: \"Cache-Control\"\n",
                "cache.targeted_field",
            ),
            ("  targeted_field: \"not a name\"\n", "cache.targeted_field"),
            ("  status_name: \"\"\n", "cache.status_name"),
            ("  status_name: \"caf\u{e9}\"\n", "cache.status_name"),
        ] {
            let error = policy(section).expect_err("refused");
            assert!(
                error.contains("edgecache.yaml:7") && error.contains(key),
                "{section:?}: {error}"
            );
        }
        let off = policy("  targeted_field: \"\"\n  cdn_cache_control: false\n").expect("loads");
        assert!(off.targeted_fields.is_empty() && off.own_targeted_field.is_none());
        let named = policy("  status_name: \"PoP Frankfurt\"\n").expect("loads");
        assert_eq!(named.status_name, "PoP Frankfurt");
    }
}
