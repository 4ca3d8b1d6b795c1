//! Validation of media places (`stores:`) and the media part of routes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{valid_label, Checker};
use crate::config::file::{self, StoreFile};
use crate::config::model::{
    BreakerSettings, FleetSettings, MediaRoute, S3Credentials, S3Settings, Secret, StoreKind,
    StoreSettings, TombstoneSettings, WriteThroughSettings,
};

/// S3 refuses parts under 5 MiB (except the last) and over 5 GiB.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

pub(super) fn stores(
    check: &mut Checker,
    files: &BTreeMap<String, StoreFile>,
) -> BTreeMap<String, StoreSettings> {
    let mut stores = BTreeMap::new();
    for (name, store) in files {
        let key = format!("stores.{name}");
        if !valid_label(name) {
            check.problem(
                &key,
                "a store name is letters, digits, `-` and `_` (at most 64)",
            );
        }
        let (kind, timeout, max_concurrency, breaker) = match store {
            StoreFile::S3(s3) => (
                s3_settings(check, &key, name, s3).map(StoreKind::S3),
                s3.timeout,
                s3.max_concurrency,
                &s3.breaker,
            ),
            StoreFile::Http(http) => (
                base_url(check, &format!("{key}.url"), &http.url)
                    .map(|url| StoreKind::Http { url }),
                http.timeout,
                http.max_concurrency,
                &http.breaker,
            ),
            StoreFile::Directory(dir) => {
                let path = check.resolve_path(&dir.path);
                if !path.is_dir() {
                    check.problem(
                        &format!("{key}.path"),
                        format!("{} is not a directory", path.display()),
                    );
                }
                (
                    Some(StoreKind::Directory { path }),
                    dir.timeout,
                    dir.max_concurrency,
                    &dir.breaker,
                )
            }
        };
        if timeout.get().is_zero() {
            check.problem(&format!("{key}.timeout"), "must be more than 0s");
        }
        if max_concurrency == 0 {
            check.problem(&format!("{key}.max_concurrency"), "must be at least 1");
        }
        let breaker = breaker_settings(check, &key, breaker);
        if let Some(kind) = kind {
            stores.insert(
                name.clone(),
                StoreSettings {
                    name: name.clone(),
                    kind,
                    timeout: timeout.get(),
                    max_concurrency,
                    breaker,
                },
            );
        }
    }
    stores
}

/// A place's breaker; `key` is the place's (`stores.spaces`).
fn breaker_settings(
    check: &mut Checker,
    key: &str,
    breaker: &file::BreakerFile,
) -> BreakerSettings {
    if breaker.failures > 0 && breaker.cooldown.get().is_zero() {
        check.problem(&format!("{key}.breaker.cooldown"), "must be more than 0s");
    }
    if breaker.failures > 0 && breaker.first_probe_after.get().is_zero() {
        check.problem(
            &format!("{key}.breaker.first_probe_after"),
            "must be more than 0s",
        );
    }
    BreakerSettings {
        failures: breaker.failures,
        cooldown: breaker.cooldown.get(),
        // A short cooldown shortens the first wait too.
        first_probe_after: breaker.first_probe_after.get().min(breaker.cooldown.get()),
    }
}

fn s3_settings(
    check: &mut Checker,
    key: &str,
    name: &str,
    s3: &file::S3StoreFile,
) -> Option<S3Settings> {
    let endpoint = base_url(check, &format!("{key}.endpoint"), &s3.endpoint);
    let bucket_ok = (3..=63).contains(&s3.bucket.len())
        && s3
            .bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        check.problem(
            &format!("{key}.bucket"),
            format!(
                "{:?} is not a bucket name (3 to 63 lower-case letters, digits, `.` and `-`)",
                s3.bucket
            ),
        );
    }
    let mut prefix = s3.prefix.clone();
    if prefix.starts_with('/') {
        check.problem(&format!("{key}.prefix"), "must not start with /");
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    for (field, size) in [
        ("part_size", s3.part_size.0),
        ("multipart_threshold", s3.multipart_threshold.0),
    ] {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) {
            check.problem(
                &format!("{key}.{field}"),
                "must be between 5MiB and 5GiB (the limits S3 puts on parts)",
            );
        }
    }
    let credentials = credentials(check, key, s3);
    Some(S3Settings {
        name: name.to_string(),
        endpoint: endpoint?.trim_end_matches('/').to_string(),
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        path_style: s3.path_style,
        prefix,
        credentials: credentials?,
        timeout: s3.timeout.get(),
        multipart_threshold: s3.multipart_threshold.0,
        part_size: s3.part_size.0,
        conditional_put: s3.conditional_put,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
}

/// Reads the keys from the credentials file, or the environment. Neither value is ever
/// part of a message: a parse error names the file and the problem only.
fn credentials(check: &mut Checker, key: &str, s3: &file::S3StoreFile) -> Option<S3Credentials> {
    let Some(path) = &s3.credentials_file else {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok();
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
        return match (id, secret) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                Some(S3Credentials {
                    access_key_id: id,
                    secret_access_key: Secret::new(secret),
                })
            }
            _ => {
                check.problem(
                    key,
                    "no credentials: set credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                );
                None
            }
        };
    };
    let field = format!("{key}.credentials_file");
    let path = check.resolve_path(path);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            check.problem(&field, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    match serde_yaml::from_str::<CredentialsFile>(&text) {
        Ok(file) if !file.access_key_id.is_empty() && !file.secret_access_key.is_empty() => {
            Some(S3Credentials {
                access_key_id: file.access_key_id,
                secret_access_key: Secret::new(file.secret_access_key),
            })
        }
        Ok(_) => {
            check.problem(&field, format!("{}: a key is empty", path.display()));
            None
        }
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!(" (line {})", l.line()))
                .unwrap_or_default();
            check.problem(
                &field,
                format!(
                    "{}{at}: expected `access_key_id:` and `secret_access_key:` and nothing else",
                    path.display()
                ),
            );
            None
        }
    }
}

/// An `http(s)://host[:port][/path]` URL, returned with a trailing `/`.
fn base_url(check: &mut Checker, key: &str, text: &str) -> Option<String> {
    let parsed = text.parse::<http::Uri>().ok().filter(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
            && uri.query().is_none()
    });
    let Some(parsed) = parsed else {
        check.problem(
            key,
            format!("{text:?} is not an http:// or https:// URL without a query"),
        );
        return None;
    };
    // A password in the URL would end up in logs with every error about the place.
    if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
        check.problem(key, "must not carry a user or password");
        return None;
    }
    let mut url = text.to_string();
    if !url.ends_with('/') {
        url.push('/');
    }
    Some(url)
}

pub(super) fn media_route(
    check: &mut Checker,
    key: &str,
    media: &file::MediaRouteFile,
    declared: &BTreeMap<String, StoreFile>,
    has_queue: bool,
) -> MediaRoute {
    if media.chain.is_empty() {
        check.problem(&format!("{key}.chain"), "lists no store");
    }
    for (i, name) in media.chain.iter().enumerate() {
        if !declared.contains_key(name) {
            check.problem(
                &format!("{key}.chain[{i}]"),
                format!("no store is named {name:?} under stores:"),
            );
        } else if media.chain[..i].contains(name) {
            check.problem(
                &format!("{key}.chain[{i}]"),
                format!("{name} is listed twice"),
            );
        }
    }
    for (field, value) in [
        ("cache_control", &media.cache_control),
        ("not_found_cache_control", &media.not_found_cache_control),
    ] {
        if http::HeaderValue::from_str(value).is_err() {
            check.problem(&format!("{key}.{field}"), "is not a valid header value");
        }
    }
    for (i, name) in media.write_through.iter().enumerate() {
        let field = format!("{key}.write_through[{i}]");
        match declared.get(name) {
            None => check.problem(&field, format!("no store is named {name:?} under stores:")),
            Some(StoreFile::Http(_)) => check.problem(
                &field,
                format!("{name} is an HTTP origin; only s3 and directory stores take writes"),
            ),
            Some(_) if media.write_through[..i].contains(name) => {
                check.problem(&field, format!("{name} is listed twice"))
            }
            Some(_) => {}
        }
        if !has_queue {
            check.problem(
                &field,
                "needs a top-level write_through: section with a queue_dir",
            );
        }
    }
    MediaRoute {
        chain: media.chain.clone(),
        write_through: media.write_through.clone(),
        cache_control: media.cache_control.clone(),
        not_found_cache_control: media.not_found_cache_control.clone(),
    }
}

pub(super) fn write_through(
    check: &mut Checker,
    file: &file::WriteThroughFile,
) -> WriteThroughSettings {
    let key = "write_through";
    for (field, value) in [("max_jobs", file.max_jobs), ("workers", file.workers)] {
        if value == 0 {
            check.problem(&format!("{key}.{field}"), "must be at least 1");
        }
    }
    if file.max_object_size.0 > file.max_bytes.0 {
        check.problem(
            &format!("{key}.max_object_size"),
            "must not exceed write_through.max_bytes",
        );
    }
    if file.retry_min.get().is_zero() || file.retry_min.get() > file.retry_max.get() {
        check.problem(
            &format!("{key}.retry_min"),
            "must be more than 0s and at most retry_max",
        );
    }
    WriteThroughSettings {
        queue_dir: check.resolve_path(&file.queue_dir),
        max_jobs: file.max_jobs,
        max_bytes: file.max_bytes.0,
        max_object_size: file.max_object_size.0,
        workers: file.workers,
        retry_min: file.retry_min.get(),
        retry_max: file.retry_max.get(),
        max_attempts: file.max_attempts,
    }
}

pub(super) fn tombstones(
    check: &mut Checker,
    file: &file::TombstonesFile,
    fleet: Option<&FleetSettings>,
) -> TombstoneSettings {
    if file.max_entries == 0 {
        check.problem("tombstones.max_entries", "must be at least 1");
    }
    if file.max_age.get().is_zero() {
        check.problem("tombstones.max_age", "must be more than 0s");
    }
    let path = file
        .path
        .clone()
        .or_else(|| fleet.map(|f| f.state_dir.join("tombstones")));
    if let Some(dir) = path.as_ref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() && file.path.is_some() {
            check.problem(
                "tombstones.path",
                format!("{} is not a directory", dir.display()),
            );
        }
    }
    TombstoneSettings {
        path,
        max_entries: file.max_entries.max(1),
        max_age: file.max_age.get(),
    }
}
