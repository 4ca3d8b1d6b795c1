//! Purges as this PoP applies them: an operator's, the cache buster's, a peer's or an
//! invalidation's, here first and then, for one made here, on every peer.

use std::sync::Arc;

use super::{Delivery, Fleet, FleetError, Purge, PurgeKind, PurgeTarget};
use crate::cache::{EdgeCache, PurgeError};
use crate::metrics;
use crate::store::{ObjectKey, Tombstones};

/// How a purge was asked for, for the log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeSource {
    Admin,
    Peer,
    CacheBuster,
    /// Read from a peer's purge log.
    CatchUp,
    /// A successful POST, PUT, DELETE through this PoP (RFC 9111 §4.4).
    Invalidation,
}

impl PurgeSource {
    fn label(self) -> &'static str {
        match self {
            PurgeSource::Admin => "admin",
            PurgeSource::Peer => "peer",
            PurgeSource::CacheBuster => "cache_buster",
            PurgeSource::CatchUp => "catch_up",
            PurgeSource::Invalidation => "invalidation",
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
    /// Puts a URL to purge in the one form the cache keys it under.
    pub urls: Option<Arc<dyn CanonicalUrls>>,
    /// Where a purge of deleted media leaves its tombstone.
    pub tombstones: Option<Arc<Tombstones>>,
    /// Tells whether media the cache buster names is really gone.
    pub presence: Option<Arc<dyn MediaPresence>>,
}

/// Whether media is still where Mastodon writes it. Mastodon's cache buster purges media
/// that was deleted, but also media that stays (an account suspended or unsuspended): only
/// media gone from the store is taken for deleted.
#[async_trait::async_trait]
pub trait MediaPresence: Send + Sync {
    /// `Some(true)`: a write-through store of the URL's media route has the object;
    /// `Some(false)`: none has it; `None`: it cannot be told (no such store, or one failed).
    async fn still_stored(&self, url: &str) -> Option<bool>;
}

/// The form the cache keys a URL under, where it has one of its own: a media route keys
/// every spelling of a file (escapes, a query) under one path.
pub trait CanonicalUrls: Send + Sync {
    /// `url` (with or without a scheme) in that form; `None`: as it is.
    fn canonical(&self, url: &str) -> Option<String>;

    /// The media key `url` names, when it is on a media route.
    fn media_key(&self, url: &str) -> Option<ObjectKey>;
}

impl Purger {
    /// Applies a purge received from outside here, logs it and sends it to every peer.
    pub async fn purge(
        &self,
        target: &PurgeTarget,
        deleted: bool,
        source: PurgeSource,
    ) -> Result<PurgeReport, PurgeFailure> {
        // The form every PoP keys it under travels, so none needs to work it out again.
        let target = self.canonical(target);
        let deleted = deleted && self.confirmed_deleted(&target, source).await;
        let purged = self.apply_here(&target, deleted, source)?;
        let mut report = PurgeReport {
            id: None,
            purged,
            pops: vec![(self.name.clone(), Delivery::Purged)],
        };
        if let Some(fleet) = &self.fleet {
            let (id, deliveries) = fleet.send(&target, deleted).await?;
            report.pops.extend(deliveries);
            report.id = Some(id);
        }
        tracing::info!(kind = ?target.kind, value = %target.value, host = ?target.host, deleted, purged, source = source.label(), id = ?report.id, "purged");
        Ok(report)
    }

    /// Passes a purge already applied here on to every peer, through the log and the
    /// outboxes like any other (an invalidation: this PoP removed its copies before
    /// answering). Without a fleet there is nothing to do.
    pub async fn pass_on(
        &self,
        target: &PurgeTarget,
        source: PurgeSource,
    ) -> Result<(), PurgeFailure> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        let target = self.canonical(target);
        let (id, _) = fleet.send(&target, false).await?;
        tracing::debug!(kind = ?target.kind, value = %target.value, source = source.label(), id, "passed on");
        Ok(())
    }

    /// Applies a purge another PoP passed on (or that its log had) here only, and logs it
    /// so that PoPs catching up from this one get it too.
    pub async fn purge_from_peer(
        &self,
        purge: &Purge,
        source: PurgeSource,
    ) -> Result<PurgeReport, PurgeFailure> {
        let purged = self.apply_here(&purge.target(), purge.deleted, source)?;
        if let Some(fleet) = &self.fleet {
            fleet.record(purge).await?;
        }
        tracing::info!(kind = ?purge.kind, value = %purge.value, host = ?purge.host, purged, source = source.label(), id = %purge.id, origin = %purge.origin, "purged");
        Ok(PurgeReport {
            id: Some(purge.id.clone()),
            purged,
            pops: vec![(self.name.clone(), Delivery::Purged)],
        })
    }

    /// Whether a purge that says its media was deleted is believed: an operator's always;
    /// the cache buster's only when the media is gone from the store Mastodon writes to.
    async fn confirmed_deleted(&self, target: &PurgeTarget, source: PurgeSource) -> bool {
        if target.kind != PurgeKind::Url || source != PurgeSource::CacheBuster {
            return true;
        }
        let url = target.value.as_str();
        let Some(presence) = &self.presence else {
            return false;
        };
        match presence.still_stored(url).await {
            Some(false) => true,
            Some(true) => {
                tracing::info!(url, "cache buster: the media is still in the store, so it is purged, not taken for deleted");
                false
            }
            None => {
                tracing::info!(
                    url,
                    "cache buster: whether the media was deleted cannot be told; purged only"
                );
                false
            }
        }
    }

    /// Remembers that the media at `url` was deleted, before any cache is emptied, so no
    /// miss in between can find a legacy copy. A URL that is no media is left alone.
    fn lay_tombstone(&self, url: &str) {
        let (Some(urls), Some(tombstones)) = (&self.urls, &self.tombstones) else {
            return;
        };
        let Some(key) = urls.media_key(url) else {
            return;
        };
        if let Err(e) = tombstones.lay(&key) {
            tracing::error!(key = %key, error = %e, "cannot record the tombstone of deleted media; it holds until a restart");
        }
    }

    /// `target` in the form the cache keys it under: a media URL in its one spelling.
    fn canonical(&self, target: &PurgeTarget) -> PurgeTarget {
        let canonical = match target.kind {
            PurgeKind::Url => self.urls.as_ref().and_then(|u| u.canonical(&target.value)),
            PurgeKind::Prefix | PurgeKind::Tag => None,
        };
        match canonical {
            Some(value) => PurgeTarget {
                value,
                ..target.clone()
            },
            None => target.clone(),
        }
    }

    fn apply_here(
        &self,
        target: &PurgeTarget,
        deleted: bool,
        source: PurgeSource,
    ) -> Result<usize, PurgeFailure> {
        // A peer that keys differently (an older version) may send another spelling.
        let target = self.canonical(target);
        let value = target.value.as_str();
        if deleted && target.kind == PurgeKind::Url {
            self.lay_tombstone(value);
        }
        let purged = match &self.cache {
            Some(cache) => match target.kind {
                PurgeKind::Url => cache.purge_url(value)?,
                PurgeKind::Prefix => cache.purge_prefix(value)?,
                PurgeKind::Tag => cache.purge_tag(value, target.host.as_deref())?,
            },
            None => 0,
        };
        metrics::get()
            .purges_received
            .with_label_values(&[source.label()])
            .inc();
        Ok(purged)
    }
}
