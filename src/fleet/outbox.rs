//! Purges on their way to one peer, kept on disk until the peer has them.
//!
//! One file per purge under `<state_dir>/outbox/<peer>/`, written to a temp name, synced and
//! renamed into place, so a crash leaves either the whole purge or none of it. A purge is
//! removed only after the peer answered 200. Names sort in the order purges were made, so
//! a peer that comes back gets them in that order.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::{FleetError, Purge};

const SUFFIX: &str = "purge";

pub struct Outbox {
    dirs: BTreeMap<String, PathBuf>,
    max_pending: usize,
    /// Purges waiting per peer, counted once at open and kept up to date.
    counts: Mutex<BTreeMap<String, usize>>,
}

impl Outbox {
    pub fn open(
        state_dir: &Path,
        peers: impl IntoIterator<Item = String>,
        max_pending: usize,
    ) -> Result<Outbox, FleetError> {
        let mut dirs = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for peer in peers {
            let dir = state_dir.join("outbox").join(&peer);
            std::fs::create_dir_all(&dir).map_err(|e| FleetError::State(dir.clone(), e))?;
            let count = list(&dir)
                .map_err(|e| FleetError::State(dir.clone(), e))?
                .len();
            counts.insert(peer.clone(), count);
            dirs.insert(peer, dir);
        }
        Ok(Outbox {
            dirs,
            max_pending,
            counts: Mutex::new(counts),
        })
    }

    pub fn pending_count(&self, peer: &str) -> usize {
        self.counts.lock().get(peer).copied().unwrap_or(0)
    }

    /// Queues `purge` for every peer, or for none: a peer whose queue is full refuses it
    /// before anything is written.
    pub fn push_all(&self, purge: &Purge) -> Result<(), FleetError> {
        {
            let counts = self.counts.lock();
            if let Some((peer, _)) = counts.iter().find(|(_, n)| **n >= self.max_pending) {
                return Err(FleetError::Full(peer.clone()));
            }
        }
        let text = serde_json::to_vec(purge).map_err(|e| FleetError::Encode(e.to_string()))?;
        for (peer, dir) in &self.dirs {
            let path = dir.join(format!("{}.{SUFFIX}", purge.id));
            write_atomically(&path, &text).map_err(|e| FleetError::State(path.clone(), e))?;
            *self.counts.lock().entry(peer.clone()).or_default() += 1;
        }
        Ok(())
    }

    /// The peer's waiting purges, oldest first. An unreadable file is set aside (renamed
    /// `.bad`) and reported, never retried forever.
    pub fn pending(&self, peer: &str) -> Vec<Purge> {
        let Some(dir) = self.dirs.get(peer) else {
            return Vec::new();
        };
        let Ok(paths) = list(dir) else {
            return Vec::new();
        };
        let mut purges = Vec::new();
        for path in paths {
            match std::fs::read(&path)
                .ok()
                .and_then(|text| serde_json::from_slice::<Purge>(&text).ok())
            {
                Some(purge) => purges.push(purge),
                None => {
                    tracing::error!(path = %path.display(), "unreadable queued purge set aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                    self.forget(peer);
                }
            }
        }
        purges
    }

    /// The peer has `id`.
    pub fn done(&self, peer: &str, id: &str) {
        let Some(dir) = self.dirs.get(peer) else {
            return;
        };
        if std::fs::remove_file(dir.join(format!("{id}.{SUFFIX}"))).is_ok() {
            self.forget(peer);
        }
    }

    fn forget(&self, peer: &str) {
        if let Some(n) = self.counts.lock().get_mut(peer) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The purge files in `dir`, in name order.
fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == SUFFIX))
        .collect();
    paths.sort();
    Ok(paths)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}
