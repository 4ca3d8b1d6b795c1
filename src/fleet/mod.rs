//! Purges that reach every PoP.
//!
//! A purge received from outside (the admin API, `edgecache purge`, Mastodon's cache
//! buster) is applied here, written to a durable outbox for every peer, and sent to each
//! peer's admin listener at once; the answer says, per PoP, whether it has purged or the
//! purge is queued. A peer that did not take it (down, unreachable, refusing) gets it again
//! from a background worker with growing pauses until it answers 200, across restarts of
//! either side, so no PoP keeps serving what was purged once it is back. A purge that
//! arrives from a peer (marked by [`FLEET_ORIGIN_HEADER`]) is applied locally only.

mod outbox;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::cache::{EdgeCache, PurgeError};
use crate::config::model::{FleetPeer, FleetSettings};
use crate::metrics;
use outbox::Outbox;

/// Marks a purge sent by a peer: the receiver applies it and sends it nowhere.
pub const FLEET_ORIGIN_HEADER: &str = "x-edgecache-fleet-origin";
/// The purge's id, for the receiver's log.
pub const PURGE_ID_HEADER: &str = "x-edgecache-purge-id";
/// One attempt to hand a purge to a peer takes at most this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a failed delivery; it doubles up to `max_retry_delay`.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);

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
}

impl PurgeKind {
    fn query_name(self) -> &'static str {
        match self {
            PurgeKind::Url => "url",
            PurgeKind::Prefix => "prefix",
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
}

/// What happened to a purge at one PoP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Purged,
    /// Not yet; it stays queued and is sent again.
    Queued(String),
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delivery::Purged => f.write_str("purged"),
            Delivery::Queued(reason) => write!(f, "queued ({reason})"),
        }
    }
}

/// The other PoPs and the purges on their way to them.
pub struct Fleet {
    name: String,
    peers: Vec<FleetPeer>,
    outbox: Outbox,
    client: reqwest::Client,
    /// The admin token, which every PoP of the fleet shares; a reload may change it.
    token: Arc<ArcSwapOption<String>>,
    wait: Duration,
    max_retry_delay: Duration,
    /// Wakes the delivery workers when purges are queued.
    queued: Notify,
    sequence: AtomicU64,
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
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            .build()
            .map_err(|e| FleetError::Encode(e.to_string()))?;
        let fleet = Arc::new(Fleet {
            name: settings.name.clone(),
            peers: settings.peers.clone(),
            outbox,
            client,
            token,
            wait: settings.wait,
            max_retry_delay: settings.max_retry_delay,
            queued: Notify::new(),
            sequence: AtomicU64::new(0),
        });
        for peer in &fleet.peers {
            fleet.report_pending(&peer.name);
        }
        Ok(fleet)
    }

    fn next_id(&self) -> String {
        let millis = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{millis:015}-{n:06}-{}", self.name)
    }

    fn report_pending(&self, peer: &str) {
        let pending = i64::try_from(self.outbox.pending_count(peer)).unwrap_or(i64::MAX);
        metrics::get()
            .fleet_pending_purges
            .with_label_values(&[peer])
            .set(pending);
    }

    /// Queues the purge for every peer and tries each once, for at most `wait`.
    pub async fn fan_out(
        &self,
        kind: PurgeKind,
        value: &str,
    ) -> Result<(String, Vec<(String, Delivery)>), FleetError> {
        let purge = Purge {
            id: self.next_id(),
            kind,
            value: value.to_string(),
            origin: self.name.clone(),
        };
        self.outbox.push_all(&purge)?;
        let attempts = self.peers.iter().map(|peer| async {
            let outcome = tokio::time::timeout(self.wait, self.deliver(peer, &purge)).await;
            let delivery = match outcome {
                Ok(Ok(())) => {
                    self.outbox.done(&peer.name, &purge.id);
                    Delivery::Purged
                }
                Ok(Err(reason)) => Delivery::Queued(reason),
                Err(_) => Delivery::Queued(format!("no answer within {:?}", self.wait)),
            };
            self.report_pending(&peer.name);
            (peer.name.clone(), delivery)
        });
        let results = futures_util::future::join_all(attempts).await;
        if results
            .iter()
            .any(|(_, d)| matches!(d, Delivery::Queued(_)))
        {
            self.queued.notify_waiters();
        }
        Ok((purge.id, results))
    }

    async fn deliver(&self, peer: &FleetPeer, purge: &Purge) -> Result<(), String> {
        let url = format!("http://{}/purge", peer.admin);
        let mut request = self
            .client
            .post(&url)
            .query(&[(purge.kind.query_name(), purge.value.as_str())])
            .header(FLEET_ORIGIN_HEADER, &purge.origin)
            .header(PURGE_ID_HEADER, &purge.id);
        if let Some(token) = self.token.load_full() {
            request = request.bearer_auth(token.as_str());
        }
        let result = match request.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("{} answered {}", peer.name, resp.status())),
            Err(e) if e.is_connect() => Err(format!("{} cannot be reached", peer.name)),
            Err(e) if e.is_timeout() => Err(format!("{} did not answer in time", peer.name)),
            Err(e) => Err(format!("{}: {e}", peer.name)),
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

    /// Sends one peer its waiting purges, oldest first, until it has them all; pauses grow
    /// while it fails.
    async fn serve_peer(&self, peer: &FleetPeer) {
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let mut failed = None;
            for purge in self.outbox.pending(&peer.name) {
                match self.deliver(peer, &purge).await {
                    Ok(()) => {
                        self.outbox.done(&peer.name, &purge.id);
                        tracing::info!(peer = %peer.name, id = %purge.id, "queued purge delivered");
                    }
                    Err(reason) => {
                        failed = Some(reason);
                        break;
                    }
                }
            }
            self.report_pending(&peer.name);
            let pause = match failed {
                Some(reason) => {
                    tracing::warn!(peer = %peer.name, retry_in = ?delay, "purge delivery failed: {reason}");
                    let pause = delay;
                    delay = (delay * 2).min(self.max_retry_delay);
                    pause
                }
                None => {
                    delay = FIRST_RETRY_DELAY;
                    self.max_retry_delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.queued.notified() => {}
            }
        }
    }
}

/// Runs the delivery workers, one per peer.
pub struct FleetService(pub Arc<Fleet>);

#[async_trait]
impl pingora::services::background::BackgroundService for FleetService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let workers = self.0.peers.iter().map(|peer| self.0.serve_peer(peer));
        tokio::select! {
            _ = futures_util::future::join_all(workers) => {}
            _ = shutdown.wait_for(|going| *going) => {}
        }
    }
}

/// How a purge was asked for, for the log and the metrics.
#[derive(Debug, Clone, Copy)]
pub enum PurgeSource {
    Admin,
    Peer,
    CacheBuster,
}

impl PurgeSource {
    fn label(self) -> &'static str {
        match self {
            PurgeSource::Admin => "admin",
            PurgeSource::Peer => "peer",
            PurgeSource::CacheBuster => "cache_buster",
        }
    }
}

/// The outcome of a purge: what this PoP removed, and what each peer did.
#[derive(Debug)]
pub struct PurgeReport {
    pub id: Option<String>,
    pub purged: usize,
    pub pops: Vec<(String, Delivery)>,
}

impl PurgeReport {
    pub fn to_json(&self) -> String {
        let pops: serde_json::Map<String, serde_json::Value> = self
            .pops
            .iter()
            .map(|(name, delivery)| (name.clone(), delivery.to_string().into()))
            .collect();
        serde_json::json!({ "id": self.id, "purged": self.purged, "pops": pops }).to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeFailure {
    #[error(transparent)]
    Bad(#[from] PurgeError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

/// Purges here and, for a purge from outside, on every peer.
pub struct Purger {
    pub cache: Option<Arc<EdgeCache>>,
    pub fleet: Option<Arc<Fleet>>,
    /// This PoP's name in reports (`local` without a fleet).
    pub name: String,
}

impl Purger {
    pub async fn purge(
        &self,
        kind: PurgeKind,
        value: &str,
        source: PurgeSource,
    ) -> Result<PurgeReport, PurgeFailure> {
        let purged = match &self.cache {
            Some(cache) => match kind {
                PurgeKind::Url => cache.purge_url(value)?,
                PurgeKind::Prefix => cache.purge_prefix(value)?,
            },
            None => 0,
        };
        metrics::get()
            .purges_received
            .with_label_values(&[source.label()])
            .inc();
        let mut report = PurgeReport {
            id: None,
            purged,
            pops: vec![(self.name.clone(), Delivery::Purged)],
        };
        if let (Some(fleet), false) = (&self.fleet, matches!(source, PurgeSource::Peer)) {
            let (id, pops) = fleet.fan_out(kind, value).await?;
            report.id = Some(id);
            report.pops.extend(pops);
        }
        tracing::info!(?kind, value, purged, source = source.label(), id = ?report.id, "purged");
        Ok(report)
    }
}
