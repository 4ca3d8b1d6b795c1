//! The purges this PoP has applied, numbered, so peers can catch up from it.
//!
//! Every purge applied here, whether it came from outside or from a peer, is appended once
//! (by id) to `<state_dir>/log/`, in segment files of [`SEGMENT_ENTRIES`] JSON lines, each
//! line synced before the purge is reported done. Peers read it after a sequence number
//! (`GET /fleet/purges?after=N`), so a PoP that was away gets every purge some surviving
//! PoP applied, even when the PoP that took the purge from outside is gone for good and its
//! outbox with it. Only the newest `retain` entries are kept; a reader whose cursor is older
//! than that learns it has a gap. The log has an id made when it is first created: a reader
//! that sees another id knows the log was wiped and starts over.
//! These are blocking calls: callers on the async runtime use `spawn_blocking`.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{FleetError, Purge};

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

pub struct PurgeLog {
    dir: PathBuf,
    id: String,
    retain: u64,
    state: Mutex<State>,
}

impl PurgeLog {
    pub fn open(state_dir: &Path, retain: u64) -> Result<PurgeLog, FleetError> {
        let dir = state_dir.join("log");
        let err = |e| FleetError::State(dir.clone(), e);
        std::fs::create_dir_all(&dir).map_err(err)?;
        let id = log_id(&dir).map_err(err)?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(err)?
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
        names.sort();
        if let Some((_, last)) = names.last() {
            drop_partial_line(last).map_err(err)?;
        }
        let mut state = State {
            head: 0,
            segments: VecDeque::new(),
            ids: HashSet::new(),
            kept: 0,
        };
        for (first, path) in names {
            let entries = read_segment(&path).map_err(err)?;
            let mut segment = Segment {
                first,
                path,
                ids: Vec::new(),
            };
            for entry in entries {
                state.head = state.head.max(entry.seq);
                state.ids.insert(entry.purge.id.clone());
                segment.ids.push(entry.purge.id);
                state.kept += 1;
            }
            state.head = state.head.max(first.saturating_sub(1));
            state.segments.push_back(segment);
        }
        Ok(PurgeLog {
            dir,
            id,
            retain: retain.max(SEGMENT_ENTRIES),
            state: Mutex::new(state),
        })
    }

    pub fn contains(&self, id: &str) -> bool {
        self.state.lock().ids.contains(id)
    }

    /// Appends `purge` unless a purge with its id is kept already; true when appended.
    pub fn append(&self, purge: &Purge) -> Result<bool, FleetError> {
        let mut state = self.state.lock();
        if state.ids.contains(&purge.id) {
            return Ok(false);
        }
        let seq = state.head + 1;
        let new_segment = state
            .segments
            .back()
            .is_none_or(|s| seq - s.first >= SEGMENT_ENTRIES);
        if new_segment {
            let path = self.dir.join(format!("segment-{seq:020}.jsonl"));
            state.segments.push_back(Segment {
                first: seq,
                path,
                ids: Vec::new(),
            });
        }
        let Some(segment) = state.segments.back_mut() else {
            return Ok(false);
        };
        let mut line = serde_json::to_vec(&LogEntry {
            seq,
            purge: purge.clone(),
        })
        .map_err(|e| FleetError::Encode(e.to_string()))?;
        line.push(b'\n');
        let path = segment.path.clone();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(&line)?;
                file.sync_data()
            });
        if let Err(e) = written {
            if segment.ids.is_empty() {
                state.segments.pop_back();
            }
            return Err(FleetError::State(path, e));
        }
        if new_segment {
            // The new file's name must survive a crash too.
            if let Ok(dir) = std::fs::File::open(&self.dir) {
                let _ = dir.sync_all();
            }
        }
        segment.ids.push(purge.id.clone());
        state.ids.insert(purge.id.clone());
        state.head = seq;
        state.kept += 1;
        // At least `retain` entries stay: a segment goes only when the rest hold enough.
        while state.segments.len() > 1
            && state
                .segments
                .front()
                .is_some_and(|s| state.kept - s.ids.len() as u64 >= self.retain)
        {
            let Some(old) = state.segments.pop_front() else {
                break;
            };
            let _ = std::fs::remove_file(&old.path);
            state.kept -= old.ids.len() as u64;
            for id in &old.ids {
                state.ids.remove(id);
            }
        }
        Ok(true)
    }

    /// Up to `limit` entries after `after`, oldest first.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<LogPage, FleetError> {
        let (head, oldest, paths) = {
            let state = self.state.lock();
            let oldest = state.segments.front().map_or(state.head + 1, |s| s.first);
            // Segments that may hold entries after `after`: the one it falls in and later.
            let segments: Vec<&Segment> = state.segments.iter().collect();
            let start = segments
                .iter()
                .rposition(|s| s.first <= after + 1)
                .unwrap_or(0);
            let paths: Vec<PathBuf> = segments[start..].iter().map(|s| s.path.clone()).collect();
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
                if entry.seq > after && entry.seq <= head && entries.len() < limit {
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
    let temp = dir.join("id.tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(id.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, &path)?;
    Ok(id)
}

/// Cuts a last line a crash left without its newline, so the next entry starts a line of
/// its own.
fn drop_partial_line(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    if bytes.last().is_none_or(|b| *b == b'\n') {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.set_len(keep as u64)?;
    file.sync_all()
}

/// The entries of one segment. A line cut short by a crash (the last one) is skipped:
/// its purge was never reported done.
fn read_segment(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    let file = std::fs::File::open(path)?;
    let mut entries = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        match serde_json::from_str::<LogEntry>(&line) {
            Ok(entry) => entries.push(entry),
            Err(_) => tracing::warn!(path = %path.display(), "unreadable purge log line skipped"),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::PurgeKind;

    fn purge(n: u64) -> Purge {
        Purge {
            id: format!("{n:015}-test"),
            kind: PurgeKind::Url,
            value: format!("https://media.example/system/{n}.png"),
            origin: "fra".to_string(),
        }
    }

    #[test]
    fn entries_are_numbered_kept_once_and_read_after_a_cursor() {
        let dir = tempfile::tempdir().expect("dir");
        let log = PurgeLog::open(dir.path(), 100_000).expect("open");
        for n in 1..=5 {
            assert!(log.append(&purge(n)).expect("append"));
        }
        assert!(
            !log.append(&purge(3)).expect("append"),
            "a repeat is logged once"
        );
        let page = log.read_after(2, 100).expect("read");
        assert_eq!(page.head, 5);
        assert_eq!(page.oldest, 1);
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(page.entries[0].purge.value, purge(3).value);
        assert_eq!(log.read_after(3, 1).expect("read").entries.len(), 1);

        // Reopened (a restart): the same id, head and ids.
        let id = page.log_id.clone();
        drop(log);
        let log = PurgeLog::open(dir.path(), 100_000).expect("reopen");
        assert!(log.contains(&purge(4).id));
        assert!(!log.append(&purge(4)).expect("append"));
        assert!(log.append(&purge(6)).expect("append"));
        let page = log.read_after(5, 100).expect("read");
        assert_eq!(page.log_id, id);
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].seq, 6);
    }

    #[test]
    fn old_segments_are_dropped_past_the_retention() {
        let dir = tempfile::tempdir().expect("dir");
        let log = PurgeLog::open(dir.path(), SEGMENT_ENTRIES).expect("open");
        let total = SEGMENT_ENTRIES * 2 + 5;
        for n in 1..=total {
            log.append(&purge(n)).expect("append");
        }
        let page = log.read_after(0, 10).expect("read");
        assert_eq!(page.head, total);
        assert!(page.oldest > SEGMENT_ENTRIES, "oldest {}", page.oldest);
        assert_eq!(page.entries[0].seq, page.oldest);
        assert!(!log.contains(&purge(1).id), "dropped ids are forgotten");
        let segments = std::fs::read_dir(dir.path().join("log"))
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("segment-"))
            })
            .count();
        assert_eq!(segments, 2);
    }

    #[test]
    fn a_line_cut_by_a_crash_is_skipped() {
        let dir = tempfile::tempdir().expect("dir");
        let log = PurgeLog::open(dir.path(), 100_000).expect("open");
        log.append(&purge(1)).expect("append");
        drop(log);
        let segment = dir.path().join(format!("log/segment-{:020}.jsonl", 1));
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("segment");
        file.write_all(b"{\"seq\":2,\"id\":\"cut").expect("write");
        drop(file);
        let log = PurgeLog::open(dir.path(), 100_000).expect("reopen");
        let page = log.read_after(0, 10).expect("read");
        assert_eq!(page.head, 1);
        assert_eq!(page.entries.len(), 1);
        // The next entry is whole, not glued to the cut line.
        log.append(&purge(2)).expect("append");
        drop(log);
        let log = PurgeLog::open(dir.path(), 100_000).expect("reopen");
        let seqs: Vec<u64> = log
            .read_after(0, 10)
            .expect("read")
            .entries
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2]);
    }
}
