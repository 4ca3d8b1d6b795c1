//! `stores:`, `write_through:` and `tombstones:`: where media lives and how copies of it
//! are made and forgotten.

use std::path::PathBuf;

use serde::Deserialize;

use super::defaults;
use crate::config::units::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TombstonesFile {
    /// The file they are kept in; absent: `<fleet.state_dir>/tombstones` with a fleet,
    /// memory only without one (lost at a restart).
    pub path: Option<PathBuf>,
    /// Kept at most; the oldest go first.
    pub max_entries: usize,
    /// Forgotten after this long.
    pub max_age: HumanDuration,
}

impl Default for TombstonesFile {
    fn default() -> Self {
        TombstonesFile {
            path: None,
            max_entries: 200_000,
            max_age: HumanDuration::from_secs(180 * 24 * 3600),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteThroughFile {
    /// A directory edgecache owns: jobs and their bodies wait here, across restarts,
    /// until every store has the object.
    pub queue_dir: PathBuf,
    /// Jobs waiting at most; a job that does not fit is dropped (and counted).
    #[serde(default = "defaults::queue_max_jobs")]
    pub max_jobs: usize,
    /// Bytes of bodies waiting at most.
    #[serde(default = "defaults::queue_max_bytes")]
    pub max_bytes: ByteSize,
    /// Larger objects are not copied on the way (`edgecache migrate` moves them).
    #[serde(default = "defaults::queue_max_object_size")]
    pub max_object_size: ByteSize,
    /// Uploads in flight at once.
    #[serde(default = "defaults::queue_workers")]
    pub workers: usize,
    /// The wait before the first retry of a failed upload; it doubles up to `retry_max`.
    #[serde(default = "defaults::retry_min")]
    pub retry_min: HumanDuration,
    #[serde(default = "defaults::retry_max")]
    pub retry_max: HumanDuration,
    /// Attempts before a job is set aside under `failed/`; 0: retry until it succeeds.
    #[serde(default)]
    pub max_attempts: u32,
}

/// One place media lives, by kind.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreFile {
    /// An S3-compatible object store.
    S3(S3StoreFile),
    /// An old server's media over HTTP(S): the key is appended to `url`.
    Http(HttpStoreFile),
    /// A local or NFS directory: the key is a path under it.
    Directory(DirectoryStoreFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3StoreFile {
    /// `https://fra1.digitaloceanspaces.com`, `http://127.0.0.1:3900`, ...
    pub endpoint: String,
    #[serde(default = "defaults::region")]
    pub region: String,
    pub bucket: String,
    /// `true`: `endpoint/bucket/key`; `false`: `bucket.endpoint/key`.
    #[serde(default = "defaults::enabled")]
    pub path_style: bool,
    /// Prepended to every key (`cache/` and the like).
    #[serde(default)]
    pub prefix: String,
    /// A YAML file with `access_key_id` and `secret_access_key`; absent: the
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` environment variables.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Larger objects are uploaded in parts.
    #[serde(default = "defaults::multipart_threshold")]
    pub multipart_threshold: ByteSize,
    #[serde(default = "defaults::part_size")]
    pub part_size: ByteSize,
    /// Send `If-None-Match: *` with uploads so a store that honours it never overwrites;
    /// turn off for stores that refuse the header (uploads still look first).
    #[serde(default = "defaults::enabled")]
    pub conditional_put: bool,
    #[serde(default = "defaults::store_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "defaults::store_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub breaker: BreakerFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStoreFile {
    /// Base URL; `http://old-server:80/system/` serves key `a/b.png` from
    /// `/system/a/b.png`.
    pub url: String,
    /// How long a request may take to get its response head, and each read of its body.
    #[serde(default = "defaults::store_timeout")]
    pub timeout: HumanDuration,
    /// Requests in flight at most (bodies included); more are refused and the chain moves on.
    #[serde(default = "defaults::store_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub breaker: BreakerFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryStoreFile {
    pub path: PathBuf,
    #[serde(default = "defaults::store_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "defaults::store_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub breaker: BreakerFile,
}

/// Stops sending to a place that keeps failing and probes it again: first after
/// `first_probe_after`, then after twice as long each time a probe fails, up to `cooldown`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerFile {
    /// Consecutive failures (errors and timeouts, not 404s) that open the circuit; 0: never.
    pub failures: u32,
    /// The longest a failing place is left alone between probes.
    pub cooldown: HumanDuration,
    /// How long the circuit stays open before the first probe (at most `cooldown`).
    pub first_probe_after: HumanDuration,
}

impl Default for BreakerFile {
    fn default() -> Self {
        BreakerFile {
            failures: 5,
            cooldown: HumanDuration::from_secs(30),
            first_probe_after: HumanDuration::from_secs(1),
        }
    }
}
