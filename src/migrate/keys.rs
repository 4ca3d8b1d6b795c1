//! Where `edgecache migrate` gets its keys: a walk of a legacy directory, or a key list
//! (one key per line, as exported from Mastodon) for an origin that cannot be listed.
//!
//! Keys are produced on a blocking thread into a bounded channel, so a directory of
//! millions of files is walked as the migration goes rather than held in memory.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::store::directory::TEMP_DIR;
use crate::store::ObjectKey;

/// One entry of the source: a key, or a name that cannot be one (reported as a failure).
pub enum KeyEntry {
    Key(ObjectKey),
    Invalid { name: String, reason: String },
}

/// The number of keys in a key list (blank lines and `#` comments do not count).
pub fn count_listed(path: &Path) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let mut count = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            count += 1;
        }
    }
    Ok(count)
}

/// Sends the keys of a key list; returns how many were sent.
pub fn send_listed(path: &Path, out: &mpsc::Sender<KeyEntry>) -> std::io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let mut sent = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix('/').unwrap_or(line);
        let entry = match ObjectKey::new(line.to_string()) {
            Ok(key) => KeyEntry::Key(key),
            Err(e) => KeyEntry::Invalid {
                name: line.to_string(),
                reason: e.to_string(),
            },
        };
        if out.blocking_send(entry).is_err() {
            break;
        }
        sent += 1;
    }
    Ok(sent)
}

/// Sends every regular file under `root` (following the layout, not symlinked directories)
/// as a key relative to it; returns how many were sent.
pub fn send_walked(root: &Path, out: &mpsc::Sender<KeyEntry>) -> std::io::Result<u64> {
    let mut sent = 0;
    let mut pending: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.flatten().collect();
        // A stable order makes progress and logs comparable between runs.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if dir == root && entry.file_name() == TEMP_DIR {
                continue;
            }
            if kind.is_dir() {
                pending.push(path);
                continue;
            }
            let is_file = kind.is_file()
                || (kind.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_file()));
            if !is_file {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let entry = match relative.to_str() {
                None => KeyEntry::Invalid {
                    name: relative.to_string_lossy().into_owned(),
                    reason: "the file name is not UTF-8".to_string(),
                },
                Some(name) => match ObjectKey::new(name.replace(std::path::MAIN_SEPARATOR, "/")) {
                    Ok(key) => KeyEntry::Key(key),
                    Err(e) => KeyEntry::Invalid {
                        name: name.to_string(),
                        reason: e.to_string(),
                    },
                },
            };
            if out.blocking_send(entry).is_err() {
                return Ok(sent);
            }
            sent += 1;
        }
    }
    Ok(sent)
}
