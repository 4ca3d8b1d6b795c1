//! The disk tier's files: the cache directory's claim and format, the meta file format,
//! entry file names, and the start-up scan that rebuilds the index from them.
//!
//! Every read here is fallible on purpose: these bytes come from disk and may be
//! truncated, damaged or from another format, and that must become a miss, never a panic.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::codec::{Reader, Writer};
use super::disk_index::{allocated, DiskEntry};
use super::meta::StoredMeta;
use super::tags::{mastodon_media_tag, of_response, Tags, MAX_TAGS};
use super::{CacheError, Hash};

/// The on-disk format's directory; a different format lives in a different directory, and
/// directories of other formats are removed at start.
const FORMAT_DIR: &str = "v1";
/// Marks a directory as edgecache's own, so a mistyped path is never emptied.
const MARKER: &str = "EDGECACHE-CACHE-DIR";
/// Bodies are checksummed and read in blocks of this size.
pub const BLOCK_SIZE: usize = 256 * 1024;
/// The filesystem block assumed when the filesystem does not say.
const FALLBACK_FS_BLOCK: u64 = 4096;
const META_MAGIC: &[u8; 8] = b"ECMETA02";
/// No meta file is larger than this; a larger one is damage.
const MAX_META_FILE: u64 = 16 * 1024 * 1024;

/// The parsed contents of a meta file.
#[derive(Debug)]
pub(super) struct MetaRecord {
    pub(super) generation: u64,
    pub(super) primary: Hash,
    pub(super) combined: Hash,
    pub(super) url: String,
    pub(super) body_len: u64,
    pub(super) crcs: Vec<u32>,
    pub(super) meta: StoredMeta,
}

pub(super) struct EntryProblem {
    pub(super) message: String,
    /// The files are gone (purged or evicted meanwhile) or could not be opened for a reason
    /// outside them: the entry is not removed.
    pub(super) not_damage: bool,
}

impl EntryProblem {
    pub(super) fn damaged(message: impl Into<String>) -> Self {
        EntryProblem {
            message: message.into(),
            not_damage: false,
        }
    }

    /// An I/O error is never taken as damage: only what was read can prove that. A short
    /// read is, though (the file is shorter than its own header says).
    pub(super) fn from_io(e: io::Error) -> Self {
        let short = e.kind() == io::ErrorKind::UnexpectedEof;
        EntryProblem {
            not_damage: !short,
            message: if e.kind() == io::ErrorKind::NotFound {
                String::new()
            } else {
                e.to_string()
            },
        }
    }
}

/// Makes `base` the cache directory (creating it, or checking that edgecache created it)
/// and removes directories of other formats; returns the format directory.
pub(super) fn claim_directory(base: &Path) -> Result<PathBuf, CacheError> {
    let io_error = |what: &str, path: &Path, e: io::Error| CacheError::Io {
        what: format!("{what} {}", path.display()),
        source: e,
    };
    fs::create_dir_all(base).map_err(|e| io_error("cannot create", base, e))?;
    let marker = base.join(MARKER);
    if !marker.exists() {
        let mut listing = fs::read_dir(base).map_err(|e| io_error("cannot read", base, e))?;
        if listing.next().is_some() {
            return Err(CacheError::ForeignDirectory(base.to_path_buf()));
        }
        fs::write(
            &marker,
            "This directory holds edgecache's disk cache; edgecache may delete anything in it.\n",
        )
        .map_err(|e| io_error("cannot write", &marker, e))?;
    }
    // Directories of other formats: their entries are misses now, so they go.
    for entry in fs::read_dir(base).map_err(|e| io_error("cannot read", base, e))? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_format_dir = name.len() > 1
            && name.starts_with('v')
            && name[1..].bytes().all(|b| b.is_ascii_digit());
        if is_format_dir && name != FORMAT_DIR {
            tracing::info!(dir = %entry.path().display(), "removing a cache directory of an old format");
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove old cache directory");
            }
        }
    }
    Ok(base.join(FORMAT_DIR))
}

/// The filesystem's allocation unit under `dir` (its fragment size, which is what a small
/// file is rounded up to), or a common block size when the filesystem does not say.
// `c_ulong` is u64 here and narrower on 32-bit targets: the casts are not always no-ops.
#[allow(clippy::unnecessary_cast)]
pub(super) fn filesystem_block(dir: &Path) -> u64 {
    let reported = nix::sys::statvfs::statvfs(dir)
        .map(|stats| {
            let fragment = stats.fragment_size() as u64;
            if fragment > 0 {
                fragment
            } else {
                stats.block_size() as u64
            }
        })
        .unwrap_or(0);
    if reported == 0 {
        tracing::warn!(dir = %dir.display(), block = FALLBACK_FS_BLOCK, "the filesystem does not say its block size; assuming one");
        return FALLBACK_FS_BLOCK;
    }
    reported
}

pub(super) fn encode_meta_file(record: &MetaRecord) -> Vec<u8> {
    let mut payload = Writer::default();
    payload.u64(record.generation);
    payload.bytes_fixed(&record.primary);
    payload.bytes_fixed(&record.combined);
    payload.bytes(record.url.as_bytes());
    payload.u64(record.body_len);
    payload.u32(BLOCK_SIZE as u32);
    payload.u32(u32::try_from(record.crcs.len()).unwrap_or(u32::MAX));
    for crc in &record.crcs {
        payload.u32(*crc);
    }
    record.meta.encode(&mut payload);
    // After the meta, so that a file written before tags existed reads as untagged.
    let tags: Vec<&str> = record.meta.tags.iter().collect();
    payload.u16(u16::try_from(tags.len()).unwrap_or(u16::MAX));
    for tag in tags {
        payload.bytes(tag.as_bytes());
    }
    let payload = payload.into_inner();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub(super) fn read_meta_file(path: &Path) -> Result<MetaRecord, EntryProblem> {
    let file = File::open(path).map_err(EntryProblem::from_io)?;
    let length = file.metadata().map_err(EntryProblem::from_io)?.len();
    if length > MAX_META_FILE {
        return Err(EntryProblem::damaged(format!(
            "meta file of {length} bytes"
        )));
    }
    let mut bytes = vec![0u8; length as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(EntryProblem::from_io)?;
    decode_meta_file(&bytes).map_err(EntryProblem::damaged)
}

pub(super) fn decode_meta_file(bytes: &[u8]) -> Result<MetaRecord, String> {
    let mut input = Reader::new(bytes);
    let magic = input.array::<8>()?;
    if &magic != META_MAGIC {
        return Err("not a meta file of this format".to_string());
    }
    let len = input.u32()? as usize;
    let crc = input.u32()?;
    if input.remaining() != len {
        return Err(format!(
            "meta file holds {} payload bytes, its header says {len}",
            input.remaining()
        ));
    }
    let payload = &bytes[bytes.len() - len..];
    if crc32fast::hash(payload) != crc {
        return Err("meta file fails its checksum".to_string());
    }
    let mut input = Reader::new(payload);
    let generation = input.u64()?;
    let primary = input.array::<16>()?;
    let combined = input.array::<16>()?;
    let url = String::from_utf8(input.bytes()?.to_vec()).map_err(|_| "URL is not UTF-8")?;
    let body_len = input.u64()?;
    let block_size = input.u32()?;
    if block_size as usize != BLOCK_SIZE {
        return Err(format!("block size {block_size}"));
    }
    let count = input.u32()? as usize;
    let expected_blocks = body_len.div_ceil(BLOCK_SIZE as u64).max(1);
    if count as u64 != expected_blocks {
        return Err(format!(
            "{count} block checksums for a body of {body_len} bytes"
        ));
    }
    // Checked against the bytes present before it sizes an allocation: the record's own
    // body length can vouch for up to 16 GiB of checksums.
    if count > input.remaining() / 4 {
        return Err(format!(
            "{count} block checksums do not fit in the {} bytes left",
            input.remaining()
        ));
    }
    let mut crcs = Vec::with_capacity(count);
    for _ in 0..count {
        crcs.push(input.u32()?);
    }
    let mut meta = StoredMeta::decode(&mut input)?;
    meta.tags = if input.remaining() > 0 {
        decode_tags(&mut input)?
    } else {
        // Written before tags were kept: they are what the stored fields and the path
        // name, as the proxy would have filed them.
        of_response(&meta.header, mastodon_media_tag(&url)).map_err(|e| e.to_string())?
    };
    Ok(MetaRecord {
        generation,
        primary,
        combined,
        url,
        body_len,
        crcs,
        meta,
    })
}

fn decode_tags(input: &mut Reader) -> Result<Tags, String> {
    let count = usize::from(input.u16()?);
    if count > MAX_TAGS {
        return Err(format!("{count} cache tags"));
    }
    let mut tags = Vec::with_capacity(count);
    for _ in 0..count {
        let tag = std::str::from_utf8(input.bytes()?).map_err(|_| "a tag is not UTF-8")?;
        tags.push(tag);
    }
    if input.remaining() > 0 {
        return Err(format!("{} bytes after the tags", input.remaining()));
    }
    Tags::new(tags).map_err(|e| e.to_string())
}

/// Parses `<primary>-<combined>-<generation>.<ext>`.
pub(super) fn parse_entry_name(name: &str) -> Option<(Hash, Hash, u64, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let mut parts = stem.split('-');
    let primary = parts.next()?;
    let combined = parts.next()?;
    let generation = parts.next()?;
    if parts.next().is_some() || primary.len() != 32 || combined.len() != 32 {
        return None;
    }
    let mut p = [0u8; 16];
    let mut c = [0u8; 16];
    hex::decode_to_slice(primary, &mut p).ok()?;
    hex::decode_to_slice(combined, &mut c).ok()?;
    let generation = u64::from_str_radix(generation, 16).ok()?;
    Some((p, c, generation, ext))
}

#[derive(Default)]
pub(super) struct FoundFiles {
    primary: Hash,
    meta: Option<(u64, u64)>,
    body: Option<u64>,
}

/// Walks the format directory: pairs each meta file with its body and keeps the newest
/// complete generation of each entry, sized as the tier counts it (each file rounded up to
/// `fs_block`). With `tidy`, everything else (strays, half-pairs, superseded copies) is
/// removed; only safe while no other writer is at work, since a half-pair may be an entry
/// being committed.
pub(super) fn scan(root: &Path, fs_block: u64, tidy: bool) -> (HashMap<Hash, DiskEntry>, u64) {
    let Ok(shards) = fs::read_dir(root) else {
        return (HashMap::new(), 0);
    };
    let listed = list_files(shards);
    let (entries, superseded) = pick_entries(listed.files, fs_block);
    if tidy {
        remove_superseded(root, superseded);
        for stray in listed.strays {
            tracing::info!(path = %stray.display(), "removing a stray file from the cache directory");
            let _ = fs::remove_file(&stray).or_else(|_| fs::remove_dir_all(&stray));
        }
    }
    (entries, listed.highest_generation)
}

/// What the shard directories hold.
struct Listed {
    /// The files of each entry, by combined hash and generation.
    files: HashMap<(Hash, u64), FoundFiles>,
    /// Files and directories that are no entry's.
    strays: Vec<PathBuf>,
    highest_generation: u64,
}

fn list_files(shards: fs::ReadDir) -> Listed {
    let mut listed = Listed {
        files: HashMap::new(),
        strays: Vec::new(),
        highest_generation: 0,
    };
    for shard in shards.flatten() {
        if shard.file_name() == "tmp" {
            continue;
        }
        let Ok(listing) = fs::read_dir(shard.path()) else {
            listed.strays.push(shard.path());
            continue;
        };
        for file in listing.flatten() {
            let path = file.path();
            let name = file.file_name();
            let parsed = name.to_str().and_then(parse_entry_name);
            let Some((primary, combined, generation, ext)) = parsed else {
                listed.strays.push(path);
                continue;
            };
            let Ok(metadata) = file.metadata() else {
                continue;
            };
            listed.highest_generation = listed.highest_generation.max(generation);
            let found = listed.files.entry((combined, generation)).or_default();
            found.primary = primary;
            match ext {
                "meta" => {
                    let mtime = metadata
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .unwrap_or(Duration::ZERO)
                        .as_secs();
                    found.meta = Some((metadata.len(), mtime));
                }
                "body" => found.body = Some(metadata.len()),
                _ => listed.strays.push(path),
            }
        }
    }
    listed
}

/// An entry's files that are not its newest whole generation: primary, combined hash and
/// generation.
type Superseded = Vec<(Hash, Hash, u64)>;

/// The newest whole generation of each entry; the others (and halves) are superseded.
fn pick_entries(
    files: HashMap<(Hash, u64), FoundFiles>,
    fs_block: u64,
) -> (HashMap<Hash, DiskEntry>, Superseded) {
    let mut entries: HashMap<Hash, DiskEntry> = HashMap::new();
    let mut superseded = Superseded::new();
    for ((combined, generation), found) in files {
        let (Some((meta_len, mtime)), Some(body_len)) = (found.meta, found.body) else {
            superseded.push((found.primary, combined, generation));
            continue;
        };
        let entry = DiskEntry {
            primary: found.primary,
            generation,
            size: allocated(meta_len, fs_block) + allocated(body_len, fs_block),
            url: None,
            touched_secs: mtime,
            committed: None,
            checked: None,
        };
        match entries.get(&combined) {
            Some(kept) if kept.generation > generation => {
                superseded.push((found.primary, combined, generation));
            }
            Some(kept) => {
                superseded.push((kept.primary, combined, kept.generation));
                entries.insert(combined, entry);
            }
            None => {
                entries.insert(combined, entry);
            }
        }
    }
    (entries, superseded)
}

fn remove_superseded(root: &Path, superseded: Superseded) {
    for (primary, combined, generation) in superseded {
        let primary_hex = hex::encode(primary);
        for ext in ["meta", "body"] {
            let path = root.join(&primary_hex[..2]).join(format!(
                "{primary_hex}-{}-{generation:016x}.{ext}",
                hex::encode(combined)
            ));
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
#[path = "disk_files_tests.rs"]
mod tests;
