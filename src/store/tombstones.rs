//! Tombstones: media keys whose media was deleted, so that nothing brings it back.
//!
//! Mastodon deletes an attachment from the object store and then asks the CDN to purge its
//! URL. Emptying the caches is not enough where a legacy place (the old server's disk) still
//! holds a copy: the next miss would find it there, serve it and write it back into the
//! store. A purge that says the media was deleted leaves a tombstone for its key: the chain
//! then asks only the write-through stores (the bucket Mastodon writes to, so a later upload
//! under the key is served again), queued copies of the key are dropped, and `migrate`
//! skips it.
//!
//! Tombstones are kept in memory and, when a path is configured, appended to a file (one
//! `<unix seconds>\t<key>` line each, synced), read back at start and rewritten when most
//! of its lines are stale. Keys never hold a tab or a line feed (see `ObjectKey`). They are
//! bounded: the oldest is dropped past `max_entries`, and one older than `max_age` is gone.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::ObjectKey;
use crate::config::model::TombstoneSettings;
use crate::metrics;

pub struct Tombstones {
    path: Option<PathBuf>,
    max_entries: usize,
    max_age: Duration,
    state: Mutex<State>,
    /// Held while a line is appended.
    writing: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Key → when it was laid (unix seconds).
    laid: HashMap<String, u64>,
    /// The same, oldest first, for eviction.
    by_age: BTreeSet<(u64, String)>,
    /// Lines in the file, stale ones included.
    lines: usize,
    /// How far the file has been read, and which file it was (its inode), for a reader
    /// that picks up what a running PoP adds.
    read_to: u64,
    inode: u64,
    /// When the file was last looked at for new lines.
    looked: Option<std::time::Instant>,
}

impl State {
    fn insert(&mut self, key: String, at: u64) {
        if let Some(old) = self.laid.insert(key.clone(), at) {
            self.by_age.remove(&(old, key.clone()));
        }
        self.by_age.insert((at, key));
    }

    fn remove(&mut self, key: &str) {
        if let Some(at) = self.laid.remove(key) {
            self.by_age.remove(&(at, key.to_string()));
        }
    }

    /// Drops what is past `max_age` or beyond `max_entries`, oldest first.
    fn bound(&mut self, now: u64, max_entries: usize, max_age: Duration) {
        let oldest_kept = now.saturating_sub(max_age.as_secs());
        while let Some((at, key)) = self.by_age.first().cloned() {
            if at >= oldest_kept && self.laid.len() <= max_entries {
                break;
            }
            self.by_age.remove(&(at, key.clone()));
            self.laid.remove(&key);
        }
    }
}

/// Read from a line of the file: the time and the key, or `None` for a damaged line.
fn parse_line(line: &str) -> Option<(u64, String)> {
    let (at, key) = line.split_once('\t')?;
    let at = at.parse().ok()?;
    let key = ObjectKey::new(key.to_string()).ok()?;
    Some((at, key.as_str().to_string()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Tombstones {
    /// Opens the tombstones at `settings.path` (created if missing) for a PoP, which lays
    /// them, or keeps them in memory only without a path.
    pub fn open(settings: &TombstoneSettings) -> io::Result<Tombstones> {
        let tombstones = Tombstones::load(settings)?;
        if let Some(path) = &tombstones.path {
            let mut state = tombstones.state.lock();
            tombstones.rewrite(path, &mut state)?;
        }
        tombstones.report(tombstones.len());
        Ok(tombstones)
    }

    /// Reads the tombstones a PoP keeps, for a process that only checks keys (`migrate`):
    /// the file is never written, and [`Self::pick_up_new`] follows what the PoP adds.
    pub fn read(settings: &TombstoneSettings) -> io::Result<Tombstones> {
        Tombstones::load(settings)
    }

    fn load(settings: &TombstoneSettings) -> io::Result<Tombstones> {
        let tombstones = Tombstones {
            path: settings.path.clone(),
            max_entries: settings.max_entries.max(1),
            max_age: settings.max_age,
            state: Mutex::new(State::default()),
            writing: Mutex::new(()),
        };
        if let Some(path) = &tombstones.path {
            let mut state = tombstones.state.lock();
            tombstones.read_from(path, &mut state, 0)?;
        }
        Ok(tombstones)
    }

    /// Reads the whole lines of the file from `offset` on.
    fn read_from(&self, path: &Path, state: &mut State, offset: u64) -> io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        state.inode = file.metadata()?.ino();
        file.seek(SeekFrom::Start(offset))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        // A last line cut short (by a crash, or still being written) is not a tombstone.
        let whole = text
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(&text[..0], |end| &text[..=end]);
        for line in String::from_utf8_lossy(whole).lines() {
            state.lines += 1;
            match parse_line(line) {
                Some((at, key)) => state.insert(key, at),
                None => {
                    tracing::warn!(path = %path.display(), "a damaged tombstone line is skipped")
                }
            }
        }
        state.read_to = offset + whole.len() as u64;
        state.bound(now_secs(), self.max_entries, self.max_age);
        Ok(())
    }

    /// Takes in what a PoP added to the file since it was last read (at most once a
    /// second); a file rewritten meanwhile is read again whole.
    pub fn pick_up_new(&self) {
        use std::os::unix::fs::MetadataExt;
        let Some(path) = &self.path else {
            return;
        };
        let mut state = self.state.lock();
        if state
            .looked
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        state.looked = Some(std::time::Instant::now());
        let Ok(meta) = fs::metadata(path) else {
            return;
        };
        let offset = if meta.ino() != state.inode || meta.len() < state.read_to {
            state.laid.clear();
            state.by_age.clear();
            state.lines = 0;
            0
        } else if meta.len() > state.read_to {
            state.read_to
        } else {
            return;
        };
        if let Err(e) = self.read_from(path, &mut state, offset) {
            tracing::warn!(path = %path.display(), error = %e, "cannot read new tombstones");
        }
    }

    /// Tombstones in memory only, with the default bounds.
    pub fn memory_only() -> Tombstones {
        Tombstones {
            path: None,
            max_entries: 200_000,
            max_age: Duration::from_secs(180 * 24 * 3600),
            state: Mutex::new(State::default()),
            writing: Mutex::new(()),
        }
    }

    /// Lays a tombstone for `key` now, durably when there is a file.
    pub fn lay(&self, key: &ObjectKey) -> io::Result<()> {
        let now = now_secs();
        let count = {
            let mut state = self.state.lock();
            state.insert(key.as_str().to_string(), now);
            state.bound(now, self.max_entries, self.max_age);
            state.laid.len()
        };
        self.report(count);
        if let Some(path) = &self.path {
            // The write and its sync happen outside the lock every media miss takes; one
            // writer at a time keeps the file's lines whole.
            let _writing = self.writing.lock();
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            let before = file.metadata()?.len();
            let line = format!("{now}\t{}\n", key.as_str());
            file.write_all(line.as_bytes())?;
            file.sync_data()?;
            let mut state = self.state.lock();
            state.lines += 1;
            // Nothing else was appended since the last read: this line needs no reading.
            if before == state.read_to {
                state.read_to = before + line.len() as u64;
            }
            if state.lines > 2 * state.laid.len() + 1024 {
                self.rewrite(path, &mut state)?;
            }
        }
        Ok(())
    }

    /// Whether `key`'s media was deleted (within `max_age`).
    pub fn contains(&self, key: &ObjectKey) -> bool {
        let mut state = self.state.lock();
        let Some(at) = state.laid.get(key.as_str()).copied() else {
            return false;
        };
        if now_secs().saturating_sub(at) > self.max_age.as_secs() {
            state.remove(key.as_str());
            return false;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.state.lock().laid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the file with the live tombstones only (written aside, synced, renamed).
    fn rewrite(&self, path: &Path, state: &mut State) -> io::Result<()> {
        let aside = path.with_extension(format!("rewrite.{}", std::process::id()));
        let mut file = File::create(&aside)?;
        let mut text = String::new();
        for (at, key) in &state.by_age {
            text.push_str(&format!("{at}\t{key}\n"));
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&aside, path)?;
        if let Some(dir) = path.parent() {
            // The rename itself must survive a power loss.
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        state.lines = state.laid.len();
        {
            use std::os::unix::fs::MetadataExt;
            let written = fs::metadata(path)?;
            state.inode = written.ino();
            state.read_to = written.len();
        }
        Ok(())
    }

    fn report(&self, count: usize) {
        metrics::get()
            .media_tombstones
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ObjectKey {
        ObjectKey::new(text.to_string()).expect("key")
    }

    fn settings(path: Option<PathBuf>, max_entries: usize, max_age_secs: u64) -> TombstoneSettings {
        TombstoneSettings {
            path,
            max_entries,
            max_age: Duration::from_secs(max_age_secs),
        }
    }

    #[test]
    fn tombstones_survive_a_reopen_and_a_line_cut_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tombstones");
        let config = settings(Some(path.clone()), 100, 3600);
        let stones = Tombstones::open(&config).expect("open");
        stones.lay(&key("a/x.png")).expect("lay");
        stones.lay(&key("b/y.png")).expect("lay");
        assert!(stones.contains(&key("a/x.png")));
        assert!(!stones.contains(&key("c/z.png")));
        drop(stones);
        let mut file = OpenOptions::new().append(true).open(&path).expect("file");
        file.write_all(b"123\tc/z.pn").expect("half a line");
        let stones = Tombstones::open(&config).expect("reopen");
        assert!(stones.contains(&key("a/x.png")) && stones.contains(&key("b/y.png")));
        assert!(!stones.contains(&key("c/z.pn")));
        assert_eq!(stones.len(), 2);
    }

    #[test]
    fn the_oldest_go_first_past_the_count_and_the_age() {
        let stones = Tombstones::open(&settings(None, 3, 3600)).expect("open");
        for n in 0..5 {
            stones.lay(&key(&format!("k/{n}"))).expect("lay");
        }
        assert_eq!(stones.len(), 3);
        assert!(!stones.contains(&key("k/0")) && stones.contains(&key("k/4")));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tombstones");
        std::fs::write(&path, "1\told/a\n2\told/b\n").expect("write");
        let stones = Tombstones::open(&settings(Some(path.clone()), 10, 3600)).expect("open");
        assert_eq!(stones.len(), 0, "laid in 1970, far past max_age");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
    }

    #[test]
    fn damaged_lines_are_skipped_and_the_file_is_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tombstones");
        let now = now_secs();
        std::fs::write(
            &path,
            format!("garbage\n{now}\t../escape\n{now}\tgood/key\n{now}\tgood/key\nx\ty\n"),
        )
        .expect("write");
        let stones = Tombstones::open(&settings(Some(path.clone()), 10, 3600)).expect("open");
        assert_eq!(stones.len(), 1);
        assert!(stones.contains(&key("good/key")));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{now}\tgood/key\n")
        );
    }

    #[test]
    fn a_reader_picks_up_what_the_pop_adds_and_a_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tombstones");
        let config = settings(Some(path.clone()), 100, 3600);
        let pop = Tombstones::open(&config).expect("open");
        pop.lay(&key("a/1")).expect("lay");
        let reader = Tombstones::read(&config).expect("read");
        assert!(reader.contains(&key("a/1")));
        pop.lay(&key("a/2")).expect("lay");
        assert!(!reader.contains(&key("a/2")), "not read yet");
        reader.state.lock().looked = None;
        reader.pick_up_new();
        assert!(reader.contains(&key("a/2")));
        // The PoP restarts and rewrites the file (a new inode).
        drop(pop);
        let pop = Tombstones::open(&config).expect("reopen");
        pop.lay(&key("a/3")).expect("lay");
        reader.state.lock().looked = None;
        reader.pick_up_new();
        assert_eq!(reader.len(), 3);
        assert!(reader.contains(&key("a/3")));
    }
}
