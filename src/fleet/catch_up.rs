//! Catching up from the peers' purge logs.
//!
//! Every `catch_up_interval`, and at start, this PoP reads each peer's purge log after the
//! last entry it read there (its cursor, kept in `<state_dir>/cursors/<peer>.json`) and
//! applies every purge it has not logged itself. Pushed purges are fast; this is what makes
//! them certain: a purge that reached any surviving PoP reaches this one once both are up,
//! whatever happened to the PoP that took it from outside.
//!
//! A first read of a peer (no cursor, or a log the peer has since wiped) starts at the
//! oldest entry it keeps: purges are idempotent, and a PoP that may hold old objects must
//! not keep serving one that was purged while it was away.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::log::LogPage;
use super::{Fleet, PurgeSource, Purger};
use crate::config::model::FleetPeer;
use crate::metrics;

/// Entries asked for per read.
const PAGE: usize = 1000;

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
            let temp = path.with_extension("tmp");
            std::fs::write(&temp, &text)?;
            std::fs::rename(&temp, &path)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn read_page(&self, peer: &FleetPeer, after: u64) -> Result<LogPage, String> {
        let url = format!("http://{}/fleet/purges", peer.admin);
        let mut request = self
            .fleet
            .client
            .get(&url)
            .query(&[("after", after.to_string()), ("limit", PAGE.to_string())]);
        if let Some(token) = self.fleet.token.load_full() {
            request = request.bearer_auth(token.as_str());
        }
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
        serde_json::from_slice(&body)
            .map_err(|e| format!("{}: unreadable purge log: {e}", peer.name))
    }

    /// Reads `peer`'s log to its end and applies what this PoP lacks; returns how many
    /// purges were applied.
    async fn catch_up(&self, peer: &FleetPeer) -> Result<usize, String> {
        let m = metrics::get();
        let saved = self.load_cursor(peer).await;
        let mut cursor = saved.clone().unwrap_or_default();
        let mut applied = 0;
        loop {
            let mut page = self.read_page(peer, cursor.seq).await?;
            if page.log_id != cursor.log_id {
                if saved.is_some() {
                    tracing::warn!(peer = %peer.name, "the peer's purge log was replaced; reading it from its start");
                }
                cursor = Cursor {
                    log_id: page.log_id.clone(),
                    seq: 0,
                };
                if page.oldest > 1 {
                    page = self.read_page(peer, 0).await?;
                }
            } else if cursor.seq + 1 < page.oldest {
                m.fleet_catch_up_gaps
                    .with_label_values(&[peer.name.as_str()])
                    .inc();
                tracing::error!(peer = %peer.name, read_up_to = cursor.seq, oldest_kept = page.oldest, "purges were dropped from the peer's log before this PoP read them; some purged objects may still be cached here");
            }
            let full = page.entries.len() >= PAGE;
            for entry in &page.entries {
                if !self.fleet.log.contains(&entry.purge.id) {
                    self.purger
                        .purge_from_peer(&entry.purge, PurgeSource::CatchUp)
                        .await
                        .map_err(|e| format!("applying {}: {e}", entry.purge.id))?;
                    m.fleet_catch_up_purges
                        .with_label_values(&[peer.name.as_str()])
                        .inc();
                    applied += 1;
                }
                cursor.seq = entry.seq;
            }
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
                    tracing::debug!(peer = %peer.name, "purge log not read: {reason}");
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
