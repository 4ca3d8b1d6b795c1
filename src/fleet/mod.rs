//! Purges that reach every PoP.
//!
//! A purge received from outside (the admin API, `edgecache purge`, Mastodon's cache
//! buster) is applied here, written to a durable outbox for every peer, and sent to each
//! peer's admin listener at once; the answer says, per PoP, whether it has purged or the
//! purge is queued. A peer that did not take it (down, unreachable, refusing) gets it again
//! from a background worker with growing pauses until it answers 200, across restarts of
//! either side, so no PoP keeps serving what was purged once it is back. A purge that
//! arrives from a peer (marked by [`FLEET_ORIGIN_HEADER`]) is applied locally only.
//!
//! Every purge applied here is also numbered in this PoP's purge log ([`log`]), which peers
//! read every `catch_up_interval` ([`catch_up`]): a PoP that was down or cut off gets what
//! it missed from any PoP that has it, even if the PoP that took the purge from outside is
//! gone for good with its outbox.

pub mod catch_up;
pub mod log;
mod outbox;
mod purger;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::model::{FleetPeer, FleetSettings};
use crate::metrics;
use log::PurgeLog;
use outbox::Outbox;
pub use purger::{CanonicalUrls, MediaPresence, PurgeFailure, PurgeReport, PurgeSource, Purger};

/// Marks a purge sent by a peer: the receiver applies it and sends it nowhere.
pub const FLEET_ORIGIN_HEADER: &str = "x-edgecache-fleet-origin";
/// The purge's id, for the receiver's log.
pub const PURGE_ID_HEADER: &str = "x-edgecache-purge-id";
/// One attempt to hand a purge to a peer takes at most this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a failed delivery; it doubles up to `max_retry_delay`.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Queued purges read per pass of a delivery worker.
const BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet state {0}: {1}")]
    State(PathBuf, std::io::Error),
    #[error("too many purges are waiting for PoP {0}; try again later")]
    Full(String),
    #[error("encoding a purge: {0}")]
    Encode(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeKind {
    Url,
    Prefix,
    /// Every object with a cache tag, on one host (`Purge::host`) or every host.
    Tag,
}

impl PurgeKind {
    pub fn query_name(self) -> &'static str {
        match self {
            PurgeKind::Url => "url",
            PurgeKind::Prefix => "prefix",
            PurgeKind::Tag => "tag",
        }
    }
}

/// One purge as it travels between PoPs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purge {
    /// Sorts in the order purges were made at their origin.
    pub id: String,
    pub kind: PurgeKind,
    pub value: String,
    /// The PoP that received it from outside.
    pub origin: String,
    /// The media at this URL was deleted: every PoP lays a tombstone for its key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// For a tag, the one host it is purged on (every host without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// What a purge removes: a URL, every URL under a prefix, or every object with a tag (on
/// `host`, or on every host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeTarget {
    pub kind: PurgeKind,
    pub value: String,
    pub host: Option<String>,
}

impl PurgeTarget {
    pub fn url(url: &str) -> PurgeTarget {
        PurgeTarget {
            kind: PurgeKind::Url,
            value: url.to_string(),
            host: None,
        }
    }

    pub fn tag(tag: &str, host: Option<&str>) -> PurgeTarget {
        PurgeTarget {
            kind: PurgeKind::Tag,
            value: tag.to_string(),
            host: host.map(str::to_string),
        }
    }
}

impl Purge {
    /// What this purge removes.
    pub fn target(&self) -> PurgeTarget {
        PurgeTarget {
            kind: self.kind,
            value: self.value.clone(),
            host: self.host.clone(),
        }
    }
}

/// What happened to a purge at one PoP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Purged,
    /// Not yet; it stays queued and is sent again.
    Queued(String),
    /// Not queued for this peer (its queue is full, or the PoP refuses it for good).
    NotQueued(String),
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delivery::Purged => f.write_str("purged"),
            Delivery::Queued(reason) => write!(f, "queued ({reason})"),
            Delivery::NotQueued(reason) => write!(f, "not queued ({reason})"),
        }
    }
}

/// Why a delivery failed, and whether sending again could help.
struct DeliveryError {
    reason: String,
    /// The peer refused this purge itself (a 4xx other than auth or rate limits).
    permanent: bool,
}

/// The other PoPs and the purges on their way to them.
pub struct Fleet {
    name: String,
    peers: Vec<FleetPeer>,
    outbox: Arc<Outbox>,
    /// Every purge applied here, for peers to catch up from.
    pub log: Arc<PurgeLog>,
    state_dir: PathBuf,
    catch_up_interval: Duration,
    client: reqwest::Client,
    /// The admin token, which every PoP of the fleet shares; a reload may change it.
    token: Arc<ArcSwapOption<String>>,
    wait: Duration,
    max_retry_delay: Duration,
    /// Wakes each peer's delivery worker when purges are queued for it (in peer order).
    queued: Vec<Notify>,
    sequence: AtomicU64,
    /// Differs between runs, so ids stay unique across restarts and clock steps.
    run: u32,
}

impl Fleet {
    pub fn open(
        settings: &FleetSettings,
        token: Arc<ArcSwapOption<String>>,
    ) -> Result<Arc<Fleet>, FleetError> {
        let outbox = Outbox::open(
            &settings.state_dir,
            settings.peers.iter().map(|p| p.name.clone()),
            settings.max_pending,
        )?;
        let log = PurgeLog::open(&settings.state_dir, settings.log_entries)?;
        // Never through an HTTP proxy from the environment: the token goes to peers only.
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| FleetError::Encode(e.to_string()))?;
        let fleet = Arc::new(Fleet {
            name: settings.name.clone(),
            peers: settings.peers.clone(),
            outbox: Arc::new(outbox),
            log: Arc::new(log),
            state_dir: settings.state_dir.clone(),
            catch_up_interval: settings.catch_up_interval,
            client,
            token,
            wait: settings.wait,
            max_retry_delay: settings.max_retry_delay,
            queued: settings.peers.iter().map(|_| Notify::new()).collect(),
            sequence: AtomicU64::new(0),
            run: run_nonce(),
        });
        let m = metrics::get();
        for peer in &fleet.peers {
            fleet.report_pending(&peer.name);
            // Present from the start, so rates and alerts see them before the first event.
            for counter in [
                &m.fleet_catch_up_purges,
                &m.fleet_catch_up_errors,
                &m.fleet_catch_up_gaps,
            ] {
                counter.with_label_values(&[peer.name.as_str()]);
            }
        }
        Ok(fleet)
    }

    fn next_id(&self) -> String {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{millis:015}-{:08x}-{n:06}-{}", self.run, self.name)
    }

    fn report_pending(&self, peer: &str) {
        let pending = i64::try_from(self.outbox.pending_count(peer)).unwrap_or(i64::MAX);
        metrics::get()
            .fleet_pending_purges
            .with_label_values(&[peer])
            .set(pending);
    }

    /// `request` with the fleet's shared admin token, which peers require.
    fn with_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token.load_full() {
            Some(token) => request.bearer_auth(token.as_str()),
            None => request,
        }
    }

    /// A purge this PoP received from outside, with a new id.
    fn new_purge(&self, target: &PurgeTarget, deleted: bool) -> Purge {
        Purge {
            id: self.next_id(),
            kind: target.kind,
            value: target.value.clone(),
            origin: self.name.clone(),
            deleted,
            host: target.host.clone(),
        }
    }

    /// Adds `purge` to this PoP's log (once per id).
    async fn record(&self, purge: &Purge) -> Result<(), FleetError> {
        let log = self.log.clone();
        let purge = purge.clone();
        tokio::task::spawn_blocking(move || log.append(&purge))
            .await
            .map_err(|e| FleetError::Encode(format!("logging: {e}")))?
            .map(|_| ())
    }

    /// Makes a purge of this PoP's, logs it and hands it to every peer (see `fan_out`);
    /// returns its id and what each peer did.
    async fn send(
        &self,
        target: &PurgeTarget,
        deleted: bool,
    ) -> Result<(String, Vec<(String, Delivery)>), FleetError> {
        let purge = self.new_purge(target, deleted);
        self.record(&purge).await?;
        let deliveries = self.fan_out(&purge).await?;
        Ok((purge.id, deliveries))
    }

    /// Queues the purge for every peer and tries each once, for at most `wait`; until that
    /// try ends the peer's worker leaves the purge alone, so a peer gets it once.
    async fn fan_out(&self, purge: &Purge) -> Result<Vec<(String, Delivery)>, FleetError> {
        let outbox = self.outbox.clone();
        let queued_purge = purge.clone();
        let pushed = tokio::task::spawn_blocking(move || outbox.push(&queued_purge))
            .await
            .map_err(|e| FleetError::Encode(format!("queueing: {e}")))?;
        let attempts = self.peers.iter().enumerate().map(|(i, peer)| {
            let pushed = pushed
                .iter()
                .find(|(name, _)| *name == peer.name)
                .map(|(_, result)| result);
            async move {
                if let Some(Err(e)) = pushed {
                    tracing::error!(peer = %peer.name, error = %e, "purge not queued for this peer");
                    return (peer.name.clone(), Delivery::NotQueued(e.to_string()));
                }
                let outcome = tokio::time::timeout(self.wait, self.deliver(peer, purge)).await;
                let delivery = match outcome {
                    Ok(Ok(())) => {
                        self.outbox.done(&peer.name, &purge.id);
                        Delivery::Purged
                    }
                    Ok(Err(e)) if e.permanent => {
                        self.outbox.set_aside(&peer.name, &purge.id);
                        Delivery::NotQueued(e.reason)
                    }
                    Ok(Err(e)) => Delivery::Queued(e.reason),
                    Err(_) => Delivery::Queued(format!("no answer within {:?}", self.wait)),
                };
                self.report_pending(&peer.name);
                if matches!(delivery, Delivery::Queued(_)) {
                    self.outbox.release(&peer.name, &purge.id);
                    // Stored as a permit if the worker is busy, so it is never missed.
                    self.queued[i].notify_one();
                }
                (peer.name.clone(), delivery)
            }
        });
        Ok(futures_util::future::join_all(attempts).await)
    }

    async fn deliver(&self, peer: &FleetPeer, purge: &Purge) -> Result<(), DeliveryError> {
        let url = format!("http://{}/purge", peer.admin);
        let mut request = self
            .client
            .post(&url)
            .query(&[(purge.kind.query_name(), purge.value.as_str())])
            .query(&[("deleted", if purge.deleted { "1" } else { "0" })])
            .header(FLEET_ORIGIN_HEADER, &purge.origin)
            .header(PURGE_ID_HEADER, &purge.id);
        if let Some(host) = &purge.host {
            request = request.query(&[("host", host.as_str())]);
        }
        let request = self.with_token(request);
        let temporary = |reason: String| DeliveryError {
            reason,
            permanent: false,
        };
        let result = match request.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => {
                let status = resp.status();
                Err(DeliveryError {
                    reason: format!("{} answered {status}", peer.name),
                    // A wrong token or a busy peer may change; a purge it finds malformed
                    // will not.
                    permanent: status.is_client_error()
                        && !matches!(status.as_u16(), 401 | 403 | 408 | 429),
                })
            }
            Err(e) if e.is_connect() => Err(temporary(format!("{} cannot be reached", peer.name))),
            Err(e) if e.is_timeout() => {
                Err(temporary(format!("{} did not answer in time", peer.name)))
            }
            Err(e) => Err(temporary(format!("{}: {e}", peer.name))),
        };
        metrics::get()
            .fleet_deliveries
            .with_label_values(&[
                peer.name.as_str(),
                if result.is_ok() { "ok" } else { "error" },
            ])
            .inc();
        result
    }

    /// Sends one peer its waiting purges, oldest first, until it has them all. While it
    /// fails, pauses grow and new purges do not cut them short.
    async fn serve_peer(&self, index: usize, peer: &FleetPeer) {
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let outbox = self.outbox.clone();
            let name = peer.name.clone();
            let batch = tokio::task::spawn_blocking(move || outbox.pending(&name, BATCH))
                .await
                .unwrap_or_default();
            let full_batch = batch.len() == BATCH;
            let mut failed = None;
            for purge in batch {
                match self.deliver(peer, &purge).await {
                    Ok(()) => {
                        self.outbox.done(&peer.name, &purge.id);
                        tracing::info!(peer = %peer.name, id = %purge.id, "queued purge delivered");
                    }
                    Err(e) if e.permanent => {
                        tracing::error!(peer = %peer.name, id = %purge.id, "peer refuses the purge; set aside: {}", e.reason);
                        self.outbox.set_aside(&peer.name, &purge.id);
                    }
                    Err(e) => {
                        failed = Some(e.reason);
                        break;
                    }
                }
            }
            self.report_pending(&peer.name);
            match failed {
                Some(reason) => {
                    tracing::warn!(peer = %peer.name, retry_in = ?delay, "purge delivery failed: {reason}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_retry_delay);
                }
                None if full_batch => delay = FIRST_RETRY_DELAY,
                None => {
                    delay = FIRST_RETRY_DELAY;
                    tokio::select! {
                        _ = tokio::time::sleep(self.max_retry_delay) => {}
                        _ = self.queued[index].notified() => {}
                    }
                }
            }
        }
    }
}

/// Replaces `path` with `bytes` whole, synced, through a temp file named for this process
/// (two processes share the fleet state during a graceful upgrade). Blocking.
fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

/// A value that differs between runs of the process.
fn run_nonce() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// Runs the delivery workers, one per peer.
pub struct FleetService(pub Arc<Fleet>);

#[async_trait]
impl pingora::services::background::BackgroundService for FleetService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let workers = self
            .0
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| self.0.serve_peer(i, peer));
        tokio::select! {
            _ = futures_util::future::join_all(workers) => {}
            _ = shutdown.wait_for(|going| *going) => {}
        }
    }
}
