//! Catching up from the peers' purge logs.
//!
//! Every `catch_up_interval`, and at start, this PoP reads each peer's purge log after the
//! last entry it read there (its cursor, kept in `<state_dir>/cursors/<peer>.json`) and
//! applies every purge it has not logged itself. Pushed purges are fast; this is what makes
//! them certain: a purge that reached any surviving PoP reaches this one once both are up,
//! whatever happened to the PoP that took it from outside.
//!
//! The first read of a peer starts at the end of its log: purges made before this PoP knew
//! the peer were never this PoP's to miss. A log the peer has since wiped or rebuilt (a
//! new id, or a head behind the cursor) is read from its start, since all of it may be
//! new here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::log::LogEntry;
use super::{replace_file, Fleet, PurgeFailure, PurgeSource, Purger};
use crate::config::model::FleetPeer;
use crate::metrics;

/// Entries asked for per read.
const PAGE: usize = 1000;

/// A page of a peer's log as read here: the entries this version can apply, and how far
/// the page went (entries of a kind a later version made are passed over).
struct ReadPage {
    log_id: String,
    oldest: u64,
    head: u64,
    entries: Vec<LogEntry>,
    /// Entries the page held, readable or not.
    read: usize,
    /// The last entry's number (0 for an empty page).
    last_seq: u64,
}

/// Reads a page entry by entry, so one entry this version cannot parse does not stop it
/// from reading the rest.
fn parse_page(body: &[u8]) -> Result<ReadPage, serde_json::Error> {
    #[derive(Deserialize)]
    struct RawPage {
        log_id: String,
        oldest: u64,
        head: u64,
        entries: Vec<serde_json::Value>,
    }
    let raw: RawPage = serde_json::from_slice(body)?;
    let read = raw.entries.len();
    let last_seq = raw
        .entries
        .iter()
        .filter_map(|e| e.get("seq")?.as_u64())
        .max()
        .unwrap_or(0);
    let entries = raw
        .entries
        .into_iter()
        .filter_map(|e| serde_json::from_value::<LogEntry>(e).ok())
        .collect();
    Ok(ReadPage {
        log_id: raw.log_id,
        oldest: raw.oldest,
        head: raw.head,
        entries,
        read,
        last_seq,
    })
}

/// Where this PoP has read a peer's log up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    log_id: String,
    seq: u64,
}

/// Reads every peer's purge log in the background.
pub struct CatchUpService {
    pub fleet: Arc<Fleet>,
    pub purger: Arc<Purger>,
}

impl CatchUpService {
    fn cursor_path(&self, peer: &FleetPeer) -> PathBuf {
        self.fleet
            .state_dir
            .join("cursors")
            .join(format!("{}.json", peer.name))
    }

    async fn load_cursor(&self, peer: &FleetPeer) -> Option<Cursor> {
        let path = self.cursor_path(peer);
        let text = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .ok()?
            .ok()?;
        serde_json::from_slice(&text).ok()
    }

    async fn save_cursor(&self, peer: &FleetPeer, cursor: &Cursor) -> std::io::Result<()> {
        let path = self.cursor_path(peer);
        let text = serde_json::to_vec(cursor).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            replace_file(&path, &text)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn read_page(&self, peer: &FleetPeer, after: u64) -> Result<ReadPage, String> {
        let url = format!("http://{}/fleet/purges", peer.admin);
        let request = self.fleet.client.get(&url).query(&[
            ("after", after.to_string()),
            ("limit", PAGE.to_string()),
            ("kinds", "url,prefix,tag".to_string()),
        ]);
        let request = self.fleet.with_token(request);
        let resp = request
            .send()
            .await
            .map_err(|e| format!("{} cannot be read: {e}", peer.name))?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", peer.name, resp.status()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{}: purge log cut short: {e}", peer.name))?;
        parse_page(&body).map_err(|e| format!("{}: unreadable purge log: {e}", peer.name))
    }

    /// Reads `peer`'s log to its end and applies what this PoP lacks; returns how many
    /// purges were applied.
    async fn catch_up(&self, peer: &FleetPeer) -> Result<usize, String> {
        let m = metrics::get();
        let saved = self.load_cursor(peer).await;
        let Some(mut cursor) = saved.clone() else {
            // First contact: what this PoP missed before it knew the peer, it was never
            // sent; from here on it misses nothing.
            let page = self.read_page(peer, u64::MAX).await?;
            let cursor = Cursor {
                log_id: page.log_id,
                seq: page.head,
            };
            self.save_cursor(peer, &cursor)
                .await
                .map_err(|e| format!("saving the cursor: {e}"))?;
            return Ok(0);
        };
        let mut applied = 0;
        loop {
            let mut page = self.read_page(peer, cursor.seq).await?;
            if page.log_id != cursor.log_id || page.head < cursor.seq {
                // The peer's log was wiped or rebuilt: all of it may be new to this PoP.
                tracing::warn!(peer = %peer.name, "the peer's purge log was replaced; reading it from its start");
                cursor = Cursor {
                    log_id: page.log_id.clone(),
                    seq: 0,
                };
                page = self.read_page(peer, 0).await?;
            } else if cursor.seq.saturating_add(1) < page.oldest {
                m.fleet_catch_up_gaps
                    .with_label_values(&[peer.name.as_str()])
                    .inc();
                tracing::error!(peer = %peer.name, read_up_to = cursor.seq, oldest_kept = page.oldest, "purges were dropped from the peer's log before this PoP read them; some purged objects may still be cached here");
            }
            let full = page.read >= PAGE;
            for entry in &page.entries {
                if !self.fleet.log.contains(&entry.purge.id) {
                    match self
                        .purger
                        .purge_from_peer(&entry.purge, PurgeSource::CatchUp)
                        .await
                    {
                        Ok(_) => {
                            m.fleet_catch_up_purges
                                .with_label_values(&[peer.name.as_str()])
                                .inc();
                            applied += 1;
                        }
                        // It will never apply (a value this PoP cannot parse): passed over,
                        // so the entries after it still arrive.
                        Err(PurgeFailure::Bad(e)) => {
                            tracing::warn!(peer = %peer.name, id = %entry.purge.id, error = %e, "a purge in the peer's log cannot be applied here; skipped");
                        }
                        Err(e) => return Err(format!("applying {}: {e}", entry.purge.id)),
                    }
                }
                cursor.seq = entry.seq;
            }
            // Past entries of kinds this version cannot apply, too.
            cursor.seq = cursor.seq.max(page.last_seq);
            if saved.as_ref() != Some(&cursor) {
                self.save_cursor(peer, &cursor)
                    .await
                    .map_err(|e| format!("saving the cursor: {e}"))?;
            }
            if !full {
                return Ok(applied);
            }
        }
    }

    async fn follow(&self, peer: &FleetPeer) {
        let interval = self.fleet.catch_up_interval;
        loop {
            match self.catch_up(peer).await {
                Ok(0) => {}
                Ok(applied) => {
                    tracing::info!(peer = %peer.name, applied, "caught up from the peer's purge log")
                }
                Err(reason) => {
                    metrics::get()
                        .fleet_catch_up_errors
                        .with_label_values(&[peer.name.as_str()])
                        .inc();
                    tracing::warn!(peer = %peer.name, "purge log not read: {reason}");
                }
            }
            tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
        }
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for CatchUpService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let followers = self.fleet.peers.iter().map(|peer| self.follow(peer));
        tokio::select! {
            _ = futures_util::future::join_all(followers) => {}
            _ = shutdown.wait_for(|going| *going) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_of_an_unknown_kind_is_passed_over_and_the_rest_are_read() {
        let body = br#"{"log_id":"a","oldest":1,"head":9,"entries":[
            {"seq":3,"id":"3-x","kind":"url","value":"example.social/a","origin":"fra"},
            {"seq":4,"id":"4-x","kind":"a-later-kind","value":"v","origin":"fra"},
            {"seq":5,"id":"5-x","kind":"tag","value":"post-1","origin":"fra","host":"example.social"}
        ]}"#;
        let page = parse_page(body).expect("page");
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 5]);
        assert_eq!((page.read, page.last_seq, page.head), (3, 5, 9));
        assert_eq!(
            page.entries[1].purge.host.as_deref(),
            Some("example.social")
        );
        assert!(parse_page(b"{\"log_id\":1}").is_err());
    }
}
