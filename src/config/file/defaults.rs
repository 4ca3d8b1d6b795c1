//! The default of every optional key, in one place.

use crate::config::units::{ByteSize, HumanDuration};

pub fn enabled() -> bool {
    true
}

pub fn memory_max_object_size() -> ByteSize {
    ByteSize(1024 * 1024)
}

pub fn disk_max_object_size() -> ByteSize {
    ByteSize(1024 * 1024 * 1024)
}

/// Sized for a small VM: ext4 gives one inode per 16 KiB, so a 25 GB disk has about
/// 1.6 million, and each entry takes two; 200,000 entries take 400,000 of them. The
/// index holds them in about 60 MiB of memory (some 300 bytes an entry with its URL),
/// which a 1 GiB VM can spare; memory, more than inodes, is what bounds it there.
pub fn disk_max_entries() -> u64 {
    200_000
}

pub fn fleet_max_pending() -> usize {
    100_000
}

pub fn fleet_catch_up_interval() -> HumanDuration {
    HumanDuration::from_secs(30)
}

pub fn fleet_log_entries() -> u64 {
    100_000
}

pub fn fleet_wait() -> HumanDuration {
    HumanDuration::from_secs(2)
}

pub fn fleet_max_retry_delay() -> HumanDuration {
    HumanDuration::from_secs(60)
}

pub fn cache_buster_method() -> String {
    "GET".to_string()
}

pub fn connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}

pub fn io_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

pub fn idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

pub fn keepalive_pool_size() -> usize {
    256
}

pub fn retry_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec()
}

pub fn media_cache_control() -> String {
    "public, max-age=31536000, immutable".to_string()
}

pub fn media_not_found_cache_control() -> String {
    "public, max-age=60".to_string()
}

pub fn region() -> String {
    "us-east-1".to_string()
}

pub fn multipart_threshold() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}

pub fn part_size() -> ByteSize {
    ByteSize(8 * 1024 * 1024)
}

pub fn store_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

pub fn store_concurrency() -> usize {
    64
}

pub fn queue_max_jobs() -> usize {
    10_000
}

pub fn queue_max_bytes() -> ByteSize {
    ByteSize(10 * 1024 * 1024 * 1024)
}

pub fn queue_max_object_size() -> ByteSize {
    ByteSize(1024 * 1024 * 1024)
}

pub fn queue_workers() -> usize {
    4
}

pub fn retry_min() -> HumanDuration {
    HumanDuration::from_secs(1)
}

pub fn retry_max() -> HumanDuration {
    HumanDuration::from_secs(300)
}
