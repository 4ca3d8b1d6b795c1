//! The state file of `edgecache migrate`: which keys every destination already has, so a
//! rerun after `kill -9` skips them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use parking_lot::Mutex;

use crate::store::ObjectKey;

/// A state file that cannot be read, is another migration's, or cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("state file {}: {message}", path.display())]
pub struct StateFileError {
    pub path: PathBuf,
    pub message: String,
}

/// The state file: one line per key that every destination has, after a header naming the
/// migration so a file from another one is not taken for this one's. In memory only a
/// 64-bit hash of each done key is kept (8 bytes a key, sorted): ten million keys take
/// 80 MB. A hash collision could skip one object wrongly; at ten million keys the chance
/// of any is about three in a million, and a rerun with a fresh state file settles it.
pub(super) struct StateFile {
    done: Vec<u64>,
    writer: Mutex<std::io::BufWriter<std::fs::File>>,
    unsynced: Mutex<(u32, Instant)>,
}

fn key_hash(key: &str) -> u64 {
    let digest = Md5::digest(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

impl StateFile {
    /// Opens the state file of the migration `header` names, or starts one.
    pub(super) fn open(path: &Path, header: &str) -> Result<StateFile, StateFileError> {
        use std::io::BufRead;
        let error = |message: String| StateFileError {
            path: path.to_path_buf(),
            message,
        };
        let mut done = Vec::new();
        let existing = path.exists();
        if existing {
            let file = std::fs::File::open(path).map_err(|e| error(e.to_string()))?;
            let mut reader = std::io::BufReader::new(file);
            let mut line = Vec::new();
            reader
                .read_until(b'\n', &mut line)
                .map_err(|e| error(e.to_string()))?;
            if line.strip_suffix(b"\n") != Some(header.as_bytes()) {
                return Err(error(format!(
                    "it belongs to another migration ({:?}); use another --state file",
                    String::from_utf8_lossy(&line).trim_end()
                )));
            }
            // Lines are read one at a time; a last line without its newline was cut by a
            // crash and does not count.
            let mut complete_len = line.len() as u64;
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| error(e.to_string()))?;
                if n == 0 || !line.ends_with(b"\n") {
                    break;
                }
                complete_len += n as u64;
                if let Ok(key) = std::str::from_utf8(&line[..line.len() - 1]) {
                    if !key.is_empty() {
                        done.push(key_hash(key));
                    }
                }
            }
            let total = reader
                .into_inner()
                .metadata()
                .map_err(|e| error(e.to_string()))?
                .len();
            if total != complete_len {
                // Cut the partial line off so appends start on a line of their own.
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|file| file.set_len(complete_len))
                    .map_err(|e| error(e.to_string()))?;
            }
            done.sort_unstable();
            done.dedup();
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| error(e.to_string()))?;
        if !existing {
            writeln!(file, "{header}").map_err(|e| error(e.to_string()))?;
        }
        Ok(StateFile {
            done,
            writer: Mutex::new(std::io::BufWriter::new(file)),
            unsynced: Mutex::new((0, Instant::now())),
        })
    }

    pub(super) fn is_done(&self, key: &ObjectKey) -> bool {
        self.done.binary_search(&key_hash(key.as_str())).is_ok()
    }

    pub(super) fn record(&self, key: &ObjectKey) {
        let mut writer = self.writer.lock();
        let _ = writeln!(writer, "{key}");
        let mut unsynced = self.unsynced.lock();
        unsynced.0 += 1;
        if unsynced.0 >= 100 || unsynced.1.elapsed() >= Duration::from_secs(1) {
            // A sync may take a while on a busy disk; let the runtime move other work off
            // this thread meanwhile.
            tokio::task::block_in_place(|| {
                let _ = writer.flush();
                let _ = writer.get_ref().sync_data();
            });
            *unsynced = (0, Instant::now());
        }
    }

    pub(super) fn flush(&self) {
        let mut writer = self.writer.lock();
        let _ = writer.flush();
        let _ = writer.get_ref().sync_data();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HEADER: &str = "edgecache-migrate-state 1 from=legacy to=s3";

    fn any_key() -> impl Strategy<Value = ObjectKey> {
        "[a-z0-9_]{1,10}(/[a-z0-9_ -]{1,10}){0,3}\\.[a-z]{3}"
            .prop_map(|key| ObjectKey::new(key).expect("a valid key"))
    }

    /// The state file a run that recorded `keys` leaves behind.
    fn state_bytes(keys: &[ObjectKey]) -> Vec<u8> {
        let mut bytes = format!("{HEADER}\n").into_bytes();
        for key in keys {
            bytes.extend_from_slice(format!("{key}\n").as_bytes());
        }
        bytes
    }

    proptest! {
        // Each case writes and reads a state file.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn recorded_keys_are_done_after_a_restart(
            keys in proptest::collection::vec(any_key(), 0..20),
            other in any_key(),
        ) {
            prop_assume!(!keys.contains(&other));
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            let state = StateFile::open(&path, HEADER).expect("creates");
            for key in &keys {
                state.record(key);
            }
            state.flush();
            drop(state);
            prop_assert_eq!(std::fs::read(&path).expect("read"), state_bytes(&keys));
            let state = StateFile::open(&path, HEADER).expect("reopens");
            for key in &keys {
                prop_assert!(state.is_done(key), "{} was forgotten", key);
            }
            prop_assert!(!state.is_done(&other));
        }
    }

    proptest! {
        // Each case opens the state file once for every byte it holds.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn a_state_file_cut_anywhere_keeps_its_whole_lines_and_drops_the_rest(
            keys in proptest::collection::vec(any_key(), 1..4),
        ) {
            let bytes = state_bytes(&keys);
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            for cut in 0..bytes.len() {
                std::fs::write(&path, &bytes[..cut]).expect("write");
                let opened = StateFile::open(&path, HEADER);
                if cut <= HEADER.len() {
                    prop_assert!(opened.is_err(), "a header cut at {} was taken", cut);
                    continue;
                }
                let state = opened.expect("opens");
                let whole = bytes[..cut].iter().filter(|b| **b == b'\n').count() - 1;
                for (i, key) in keys.iter().enumerate() {
                    prop_assert_eq!(state.is_done(key), keys[..whole].contains(key), "key {}", i);
                }
                drop(state);
                let left = std::fs::read(&path).expect("read");
                prop_assert!(left.ends_with(b"\n"), "a partial line was kept at cut {}", cut);
                prop_assert!(bytes.starts_with(&left));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn arbitrary_lines_after_the_header_never_panic_and_leave_whole_lines(
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            let mut bytes = format!("{HEADER}\n").into_bytes();
            bytes.extend_from_slice(&tail);
            std::fs::write(&path, &bytes).expect("write");
            let state = StateFile::open(&path, HEADER).expect("opens");
            drop(state);
            let left = std::fs::read(&path).expect("read");
            prop_assert!(left.ends_with(b"\n"));
            prop_assert!(bytes.starts_with(&left));
        }

        #[test]
        fn an_arbitrary_file_as_the_state_file_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("state");
            std::fs::write(&path, &bytes).expect("write");
            let opened = StateFile::open(&path, HEADER);
            if !bytes.starts_with(format!("{HEADER}\n").as_bytes()) {
                prop_assert!(opened.is_err());
            }
        }
    }
}
