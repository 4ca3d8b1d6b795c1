//! The purges this PoP has applied, numbered, so peers can catch up from it.
//!
//! Every purge applied here, whether it came from outside or from a peer, is appended once
//! (by id) to `<state_dir>/log/`, in segment files of `SEGMENT_ENTRIES` JSON lines, each
//! line synced before the purge is reported done. Peers read it after a sequence number
//! (`GET /fleet/purges?after=N`), so a PoP that was away gets every purge some surviving
//! PoP applied, even when the PoP that took the purge from outside is gone for good and its
//! outbox with it. Only the newest `retain` entries are kept; a reader whose cursor is older
//! than that learns it has a gap. The log has an id made when it is first created: a reader
//! that sees another id knows the log was wiped and starts over.
//! These are blocking calls: callers on the async runtime use `spawn_blocking`.

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{FleetError, Purge, PurgeKind};

/// Entries per segment file; whole segments are dropped once older than the retention.
const SEGMENT_ENTRIES: u64 = 10_000;

/// One logged purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub purge: Purge,
}

/// What a reader gets: the entries after its cursor, and where the log stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    pub log_id: String,
    /// The oldest sequence number still kept (head + 1 when the log is empty).
    pub oldest: u64,
    pub head: u64,
    pub entries: Vec<LogEntry>,
}

struct Segment {
    first: u64,
    path: PathBuf,
    /// Bytes of whole lines read or written so far.
    len: u64,
    /// Ids in it, to forget them when it is dropped.
    ids: Vec<String>,
}

struct State {
    head: u64,
    segments: VecDeque<Segment>,
    /// Ids of every purge kept, so a purge that arrives twice is logged once.
    ids: HashSet<String>,
    kept: u64,
}

impl State {
    fn add(&mut self, segment: usize, entry: LogEntry) {
        self.head = self.head.max(entry.seq);
        self.ids.insert(entry.purge.id.clone());
        self.kept += 1;
        if let Some(segment) = self.segments.get_mut(segment) {
            segment.ids.push(entry.purge.id);
        }
    }

    fn forget_oldest(&mut self) -> Option<Segment> {
        let old = self.segments.pop_front()?;
        self.kept -= old.ids.len() as u64;
        for id in &old.ids {
            self.ids.remove(id);
        }
        Some(old)
    }
}

/// The log. Two processes may share it for a few seconds during a graceful upgrade, so
/// every change is made under an exclusive lock on `log/lock`, after reading what the
/// other process appended.
pub struct PurgeLog {
    dir: PathBuf,
    id: String,
    retain: u64,
    lock_file: std::fs::File,
    state: Mutex<State>,
}

impl PurgeLog {
    pub fn open(state_dir: &Path, retain: u64) -> Result<PurgeLog, FleetError> {
        let dir = state_dir.join("log");
        let err = |e| FleetError::State(dir.clone(), e);
        std::fs::create_dir_all(&dir).map_err(err)?;
        let id = log_id(&dir).map_err(err)?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(err)?;
        let log = PurgeLog {
            dir: dir.clone(),
            id,
            retain: retain.max(SEGMENT_ENTRIES),
            lock_file,
            state: Mutex::new(State {
                head: 0,
                segments: VecDeque::new(),
                ids: HashSet::new(),
                kept: 0,
            }),
        };
        {
            let mut state = log.state.lock();
            log.locked(|| log.refresh(&mut state)).map_err(err)?;
        }
        Ok(log)
    }

    /// Runs `f` holding the lock other processes take.
    fn locked<T>(&self, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        self.lock_file.lock()?;
        let result = f();
        let _ = self.lock_file.unlock();
        result
    }

    /// Takes in what is on disk and not yet in `state`: segments another process added or
    /// removed, and lines it appended. A last line without its newline was cut short by a
    /// crash (no writer is at work under the lock) and is cut off.
    fn refresh(&self, state: &mut State) -> std::io::Result<()> {
        let mut on_disk: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter_map(|path| {
                let first = path
                    .file_name()?
                    .to_str()?
                    .strip_prefix("segment-")?
                    .strip_suffix(".jsonl")?
                    .parse::<u64>()
                    .ok()?;
                Some((first, path))
            })
            .collect();
        on_disk.sort();
        // Segments the other process's retention removed.
        let oldest_on_disk = on_disk.first().map(|(first, _)| *first);
        while state
            .segments
            .front()
            .is_some_and(|s| oldest_on_disk.is_none_or(|oldest| s.first < oldest))
        {
            state.forget_oldest();
        }
        let newest_known = state.segments.back().map(|s| s.first);
        for (first, path) in on_disk {
            if newest_known.is_some_and(|known| first < known) {
                continue;
            }
            if newest_known != Some(first) {
                state.segments.push_back(Segment {
                    first,
                    path: path.clone(),
                    len: 0,
                    ids: Vec::new(),
                });
            }
            let index = state.segments.len() - 1;
            let known_len = state.segments[index].len;
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?;
            // A segment's name says every number before it was given out, even while it
            // holds no line yet: the next number must not fall before it.
            state.head = state.head.max(first.saturating_sub(1));
            let size = file.metadata()?.len();
            if size <= known_len {
                continue;
            }
            file.seek(SeekFrom::Start(known_len))?;
            let mut bytes = Vec::with_capacity((size - known_len) as usize);
            file.read_to_end(&mut bytes)?;
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            for line in bytes[..whole].split(|b| *b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<LogEntry>(line) {
                    Ok(entry) => state.add(index, entry),
                    Err(_) => {
                        tracing::warn!(path = %path.display(), "unreadable purge log line skipped")
                    }
                }
            }
            state.segments[index].len = known_len + whole as u64;
            if whole < bytes.len() {
                file.set_len(known_len + whole as u64)?;
                file.sync_all()?;
            }
        }
        Ok(())
    }

    pub fn contains(&self, id: &str) -> bool {
        self.state.lock().ids.contains(id)
    }

    /// Appends `purge` unless a purge with its id is kept already; true when appended.
    pub fn append(&self, purge: &Purge) -> Result<bool, FleetError> {
        let mut state = self.state.lock();
        self.locked(|| self.append_locked(&mut state, purge))
            .map_err(|e| FleetError::State(self.dir.clone(), e))
    }

    fn append_locked(&self, state: &mut State, purge: &Purge) -> std::io::Result<bool> {
        self.refresh(state)?;
        if state.ids.contains(&purge.id) {
            return Ok(false);
        }
        // Only damage (a line's number or a segment's name) can have used up the numbers.
        let seq = state
            .head
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("no purge sequence number is left"))?;
        let new_segment = state
            .segments
            .back()
            .is_none_or(|s| seq - s.first >= SEGMENT_ENTRIES);
        if new_segment {
            state.segments.push_back(Segment {
                first: seq,
                path: self.dir.join(format!("segment-{seq:020}.jsonl")),
                len: 0,
                ids: Vec::new(),
            });
        }
        let index = state.segments.len() - 1;
        let mut line = serde_json::to_vec(&LogEntry {
            seq,
            purge: purge.clone(),
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let segment = &state.segments[index];
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&segment.path)?;
        let written = file.write_all(&line).and_then(|()| file.sync_data());
        if let Err(e) = written {
            // A line cut short would swallow the next one.
            let _ = file.set_len(segment.len);
            if new_segment {
                let _ = std::fs::remove_file(&segment.path);
                state.segments.pop_back();
            }
            return Err(e);
        }
        if new_segment {
            // The new file's name must survive a crash too.
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        state.segments[index].len += line.len() as u64;
        state.add(
            index,
            LogEntry {
                seq,
                purge: purge.clone(),
            },
        );
        // At least `retain` entries stay: a segment goes only when the rest hold enough.
        while state.segments.len() > 1
            && state
                .segments
                .front()
                .is_some_and(|s| state.kept - s.ids.len() as u64 >= self.retain)
        {
            if let Some(old) = state.forget_oldest() {
                let _ = std::fs::remove_file(&old.path);
            }
        }
        Ok(true)
    }

    /// Up to `limit` entries after `after`, oldest first; tag purges only `with_tags` (a reader of an
    /// older version cannot parse them, and would stop reading at the first one).
    pub fn read_after(
        &self,
        after: u64,
        limit: usize,
        with_tags: bool,
    ) -> Result<LogPage, FleetError> {
        let (head, oldest, paths) = {
            let mut state = self.state.lock();
            self.locked(|| self.refresh(&mut state))
                .map_err(|e| FleetError::State(self.dir.clone(), e))?;
            let oldest = state
                .segments
                .front()
                .map_or(state.head.saturating_add(1), |s| s.first);
            let paths: Vec<PathBuf> = if after >= state.head {
                Vec::new()
            } else {
                // The segment `after + 1` falls in, and every later one.
                let start = state
                    .segments
                    .iter()
                    .rposition(|s| s.first <= after.saturating_add(1))
                    .unwrap_or(0);
                state
                    .segments
                    .iter()
                    .skip(start)
                    .map(|s| s.path.clone())
                    .collect()
            };
            (state.head, oldest, paths)
        };
        let mut entries = Vec::new();
        for path in paths {
            let found = match read_segment(&path) {
                Ok(found) => found,
                // Dropped by the retention since the lock was let go: nothing to give.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FleetError::State(path, e)),
            };
            for entry in found {
                let readable = with_tags || entry.purge.kind != PurgeKind::Tag;
                if entry.seq > after && entry.seq <= head && entries.len() < limit && readable {
                    entries.push(entry);
                }
            }
            if entries.len() >= limit {
                break;
            }
        }
        Ok(LogPage {
            log_id: self.id.clone(),
            oldest,
            head,
            entries,
        })
    }
}

/// The log's id, made once and kept in `dir/id`.
fn log_id(dir: &Path) -> std::io::Result<String> {
    let path = dir.join("id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{nanos:x}-{:x}", std::process::id());
    super::replace_file(&path, id.as_bytes())?;
    Ok(id)
}

/// The whole lines of one segment. Lines that do not parse (bytes damaged on disk) are
/// skipped rather than stop the log from being read.
fn read_segment(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    Ok(whole_lines(&std::fs::read(path)?))
}

/// The entries of the lines in `bytes` that end with their newline.
fn whole_lines(bytes: &[u8]) -> Vec<LogEntry> {
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    bytes[..whole]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
