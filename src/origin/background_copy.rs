//! Write-through copies of objects the chain serves in parts.
//!
//! A route that slices asks the chain for one slice at a time, so no single answer carries
//! the whole object a write-through copy needs. When a part of an object comes from a place
//! that is not every write-through store, the whole object is fetched once more, in the
//! background, from the place that served the part, and spooled into the write-through
//! queue like any copy. The client's request never waits for it.
//!
//! Bounded: the copy's room in the queue is reserved first (an object already queued is not
//! fetched again, and the queue's limits on jobs and bytes hold), and at most
//! [`AT_ONCE`] such fetches run at a time; past that the copy is left for a later request
//! (or `edgecache migrate`).

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use super::{lookup, ChainAnswer};
use crate::metrics;
use crate::migrate::queue::{NewJob, WriteThroughQueue};
use crate::migrate::tee::tee_body;
use crate::store::places::Places;
use crate::store::{ObjectInfo, ObjectKey};

/// Whole-object fetches for copies running at once, at most.
pub const AT_ONCE: usize = 4;

/// Starts copies of objects served in parts.
pub struct BackgroundCopies {
    places: Arc<Places>,
    queue: Arc<WriteThroughQueue>,
    permits: Arc<Semaphore>,
}

impl BackgroundCopies {
    pub fn new(places: Arc<Places>, queue: Arc<WriteThroughQueue>) -> BackgroundCopies {
        BackgroundCopies {
            places,
            queue,
            permits: Arc::new(Semaphore::new(AT_ONCE)),
        }
    }

    /// Copies the object `key`, described by `info`, from `place` into `stores`, unless it
    /// is queued already, the queue has no room, or [`AT_ONCE`] copies are being fetched.
    pub fn start(&self, key: &ObjectKey, info: &ObjectInfo, place: &str, stores: Vec<String>) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::get()
                .write_through_jobs
                .with_label_values(&["busy"])
                .inc();
            return;
        };
        let job = NewJob {
            key: key.clone(),
            stores,
            info: info.clone(),
        };
        let Some(reserved) = self.queue.reserve(job) else {
            return;
        };
        let places = self.places.clone();
        let (key, place, expected) = (key.clone(), place.to_string(), info.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let answer = lookup(&places, std::slice::from_ref(&place), &key, None, true).await;
            let ChainAnswer::Found { mut found, .. } = answer else {
                tracing::info!(
                    key = key.as_str(),
                    place,
                    "the place no longer has the object to copy"
                );
                return;
            };
            // The part served and the whole fetched now must be one version of the object.
            if found.info.len != expected.len || found.info.etag != expected.etag {
                tracing::info!(
                    key = key.as_str(),
                    place,
                    "the object changed before its copy"
                );
                return;
            }
            let (Some(body), Some(tee)) = (found.body.take(), reserved.tee()) else {
                return;
            };
            let mut copying = tee_body(body, tee);
            while let Some(piece) = copying.next().await {
                if let Err(e) = piece {
                    tracing::info!(key = key.as_str(), place, error = %e, "copy broken off");
                    return;
                }
            }
        });
    }
}
