//! Purges on their way to one peer, kept on disk until the peer has them.
//!
//! One file per purge under `<state_dir>/outbox/<peer>/`, written to a temp name, synced,
//! linked into place (never over another purge) and the directory synced, so a purge
//! reported queued survives a crash or power loss whole. A purge is removed only after the
//! peer answered 200, or set aside (`.bad`) when the peer refuses it for good. Names sort
//! in the order purges were made, so a peer that comes back gets them in that order.
//! A purge being handed over by the call that made it is claimed in memory from before its
//! file exists until that attempt ends, so the peer's worker never sends the same purge at
//! the same time.
//! These are blocking calls: callers on the async runtime use `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
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
    /// (peer, id) of purges a first attempt is delivering; `pending` skips them.
    claimed: Mutex<BTreeSet<(String, String)>>,
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
            remove_leftover_temps(&dir);
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
            claimed: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn pending_count(&self, peer: &str) -> usize {
        self.counts.lock().get(peer).copied().unwrap_or(0)
    }

    /// Queues `purge` for each peer, claimed for the caller's first attempt (end it with
    /// `done`, `set_aside` or `release`); a peer whose queue is full (or whose directory
    /// cannot be written) does not get it, and only that peer is reported.
    pub fn push(&self, purge: &Purge) -> Vec<(String, Result<(), FleetError>)> {
        let text = match serde_json::to_vec(purge) {
            Ok(text) => text,
            Err(e) => {
                return self
                    .dirs
                    .keys()
                    .map(|peer| (peer.clone(), Err(FleetError::Encode(e.to_string()))))
                    .collect()
            }
        };
        let mut results = Vec::new();
        for (peer, dir) in &self.dirs {
            if self.pending_count(peer) >= self.max_pending {
                results.push((peer.clone(), Err(FleetError::Full(peer.clone()))));
                continue;
            }
            let path = dir.join(format!("{}.{SUFFIX}", purge.id));
            let claim = (peer.clone(), purge.id.clone());
            // Claimed before the file appears, so no worker can read it unclaimed.
            let newly_claimed = self.claimed.lock().insert(claim.clone());
            let written = write_atomically(&path, &text).map_err(|e| FleetError::State(path, e));
            if written.is_ok() {
                *self.counts.lock().entry(peer.clone()).or_default() += 1;
            } else if newly_claimed {
                self.claimed.lock().remove(&claim);
            }
            results.push((peer.clone(), written));
        }
        results
    }

    /// Up to `limit` of the peer's waiting purges, oldest first, leaving out those claimed
    /// by a first attempt. An unreadable file is set aside (renamed `.bad`) and reported,
    /// never retried forever.
    pub fn pending(&self, peer: &str, limit: usize) -> Vec<Purge> {
        let Some(dir) = self.dirs.get(peer) else {
            return Vec::new();
        };
        let Ok(paths) = list(dir) else {
            return Vec::new();
        };
        let unclaimed: Vec<PathBuf> = {
            let claimed = self.claimed.lock();
            paths
                .into_iter()
                .filter(|path| {
                    let id = path
                        .file_stem()
                        .and_then(|stem| stem.to_str())
                        .unwrap_or("");
                    !claimed.contains(&(peer.to_string(), id.to_string()))
                })
                .take(limit)
                .collect()
        };
        let mut purges = Vec::new();
        for path in unclaimed {
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
        self.release(peer, id);
    }

    /// The first attempt at `id` is over without the peer having it: it waits for the
    /// peer's worker like any other queued purge.
    pub fn release(&self, peer: &str, id: &str) {
        self.claimed
            .lock()
            .remove(&(peer.to_string(), id.to_string()));
    }

    /// The peer refuses `id` for good: kept beside the queue as `.bad`, for an operator.
    pub fn set_aside(&self, peer: &str, id: &str) {
        let Some(dir) = self.dirs.get(peer) else {
            return;
        };
        let path = dir.join(format!("{id}.{SUFFIX}"));
        if std::fs::rename(&path, path.with_extension("bad")).is_ok() {
            self.forget(peer);
        }
        self.release(peer, id);
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
    let written = std::fs::File::create(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        // A link never replaces a purge already there under the same name.
        .and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    written?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Temp files a crash left behind: never linked, so never reported queued.
fn remove_leftover_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "tmp") {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::PurgeKind;

    fn purge(id: &str) -> Purge {
        Purge {
            id: id.to_string(),
            kind: PurgeKind::Url,
            value: "media.example/system/a.png".to_string(),
            origin: "fra".to_string(),
            deleted: false,
            host: None,
        }
    }

    #[test]
    fn a_full_peer_refuses_alone_and_nothing_is_ever_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outbox =
            Outbox::open(dir.path(), ["ewr".to_string(), "nrt".to_string()], 2).expect("open");
        assert!(outbox.push(&purge("1")).iter().all(|(_, r)| r.is_ok()));
        outbox.done("ewr", "1");
        assert!(outbox.push(&purge("2")).iter().all(|(_, r)| r.is_ok()));
        // nrt now holds 2 (its limit), ewr 1.
        let third = outbox.push(&purge("3"));
        let result = |peer: &str| {
            third
                .iter()
                .find(|(name, _)| name == peer)
                .map(|(_, r)| r.is_ok())
        };
        assert_eq!((result("ewr"), result("nrt")), (Some(true), Some(false)));
        assert_eq!(outbox.pending_count("nrt"), 2);
        // The same id again never overwrites the waiting purge.
        let again = outbox.push(&purge("3"));
        assert!(again.iter().all(|(_, r)| r.is_err()));
        for id in ["2", "3"] {
            outbox.release("ewr", id);
        }
        let ids: Vec<String> = outbox
            .pending("ewr", 10)
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, ["2", "3"]);
        // A reopened outbox counts what is on disk and drops a crash's temp file.
        std::fs::write(dir.path().join("outbox/ewr/9.tmp"), b"half").expect("temp");
        drop(outbox);
        let reopened =
            Outbox::open(dir.path(), ["ewr".to_string(), "nrt".to_string()], 2).expect("open");
        assert_eq!(reopened.pending_count("ewr"), 2);
        assert!(!dir.path().join("outbox/ewr/9.tmp").exists());
    }

    fn pending_ids(outbox: &Outbox, peer: &str) -> Vec<String> {
        outbox.pending(peer, 10).into_iter().map(|p| p.id).collect()
    }

    #[test]
    fn a_purge_in_its_first_attempt_is_not_handed_to_the_worker_too() {
        let dir = tempfile::tempdir().expect("temp dir");
        let outbox =
            Outbox::open(dir.path(), ["ewr".to_string(), "nrt".to_string()], 10).expect("open");
        assert!(outbox.push(&purge("1")).iter().all(|(_, r)| r.is_ok()));
        // While the first attempt runs, the workers see nothing to send.
        assert!(pending_ids(&outbox, "ewr").is_empty());
        assert!(pending_ids(&outbox, "nrt").is_empty());
        assert_eq!(outbox.pending_count("nrt"), 1);
        // ewr got it; nrt could not be reached and is left to its worker.
        outbox.done("ewr", "1");
        outbox.release("nrt", "1");
        assert!(pending_ids(&outbox, "ewr").is_empty());
        assert_eq!(pending_ids(&outbox, "nrt"), ["1"]);
        // A push that fails (the id is already queued) takes no claim from the waiting one.
        assert!(outbox
            .push(&purge("1"))
            .iter()
            .any(|(peer, r)| peer == "nrt" && r.is_err()));
        assert_eq!(pending_ids(&outbox, "nrt"), ["1"]);
        outbox.done("nrt", "1");
        assert_eq!(outbox.pending_count("nrt"), 0);
    }
}
