//! The media chain: a try_files over object stores and legacy origins.
//!
//! A media route lists places by name; [`Places::lookup`] asks them in order and the first
//! that has the object answers. A place that fails (error, timeout, refused by its
//! [`guard::Guard`]) is logged and counted and the next is asked, but a failure is never
//! taken to mean "absent": when nothing had the object and something failed, the answer is
//! a failure (502), not a 404 that the cache would keep.
//!
//! The chain is served to pingora by an in-process HTTP server on loopback
//! ([`server::MediaServer`]), so media misses go through the same cache, lock, range and
//! stale machinery as responses from the core.

pub mod guard;
pub mod http;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::config::model::{StoreKind, StoreSettings};
use crate::metrics;
use crate::store::directory::DirectoryStore;
use crate::store::s3::S3Store;
use crate::store::{
    BodyStream, ByteRange, Found, Lookup, ObjectKey, ObjectStore, Place, StoreError,
};
use guard::{Admission, Guard};

/// A place with its protection.
pub struct GuardedPlace {
    pub place: Place,
    guard: Arc<Guard>,
}

/// Every configured place, by name; built once at start.
#[derive(Default)]
pub struct Places {
    by_name: HashMap<String, GuardedPlace>,
}

/// What the chain found.
pub enum ChainAnswer {
    Found {
        found: Found,
        /// The place that had it.
        place: String,
        /// Places asked before it that said they have no such object.
        absent_from: Vec<String>,
    },
    NotFound,
    RangeNotSatisfiable {
        len: u64,
    },
    /// Nothing had it and at least one place could not be asked.
    Failed {
        errors: Vec<String>,
    },
}

impl Places {
    pub fn build(stores: &BTreeMap<String, StoreSettings>) -> Result<Places, StoreError> {
        let mut by_name = HashMap::new();
        for (name, settings) in stores {
            let place = match &settings.kind {
                StoreKind::S3(s3) => Place::Store(Arc::new(S3Store::new(s3))),
                StoreKind::Directory { path } => Place::Store(Arc::new(DirectoryStore::new(
                    name,
                    path.clone(),
                    settings.timeout,
                    settings.max_concurrency,
                ))),
                StoreKind::Http { url } => Place::Legacy(Arc::new(http::HttpSource::new(
                    name,
                    url,
                    settings.timeout,
                )?)),
            };
            let guard = Arc::new(Guard::new(name, settings.max_concurrency, settings.breaker));
            by_name.insert(name.clone(), GuardedPlace { place, guard });
        }
        Ok(Places { by_name })
    }

    /// The writable store of that name.
    /// The names of the places that are object stores (write-through may target them).
    pub fn store_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .iter()
            .filter(|(_, guarded)| matches!(guarded.place, Place::Store(_)))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    pub fn store(&self, name: &str) -> Option<Arc<dyn ObjectStore>> {
        match &self.by_name.get(name)?.place {
            Place::Store(store) => Some(store.clone()),
            Place::Legacy(_) => None,
        }
    }

    /// The place of that name, for reading.
    pub fn source(&self, name: &str) -> Option<Arc<dyn crate::store::Source>> {
        match &self.by_name.get(name)?.place {
            Place::Store(store) => Some(store.clone() as Arc<dyn crate::store::Source>),
            Place::Legacy(source) => Some(source.clone()),
        }
    }

    /// Asks the places of `chain` in order for `key`.
    pub async fn lookup(
        &self,
        chain: &[String],
        key: &ObjectKey,
        range: Option<ByteRange>,
        with_body: bool,
    ) -> ChainAnswer {
        let m = metrics::get();
        let mut absent_from = Vec::new();
        let mut errors = Vec::new();
        for name in chain {
            let Some(place) = self.by_name.get(name) else {
                errors.push(format!(
                    "{name}: not configured (a reload added it; restart to use it)"
                ));
                continue;
            };
            let Some(mut admission) = place.guard.admit() else {
                m.media_step_lookups
                    .with_label_values(&[name, "shed"])
                    .inc();
                errors.push(format!(
                    "{name}: refused (concurrency limit or open circuit)"
                ));
                continue;
            };
            let started = Instant::now();
            let result = place.place.source().get(key, range, with_body).await;
            m.media_step_seconds
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(Lookup::Found(mut found)) => {
                    // With a body, the place has succeeded only once all of it has come:
                    // a dying disk answers the open and then fails the reads.
                    if found.body.is_none() {
                        admission.succeeded();
                    }
                    m.media_step_lookups.with_label_values(&[name, "hit"]).inc();
                    let expected = found.body_len();
                    found.body = found
                        .body
                        .take()
                        .map(|body| checked_body(body, expected, admission, name));
                    return ChainAnswer::Found {
                        found,
                        place: name.clone(),
                        absent_from,
                    };
                }
                Ok(Lookup::RangeNotSatisfiable(u)) => {
                    admission.succeeded();
                    m.media_step_lookups.with_label_values(&[name, "hit"]).inc();
                    return ChainAnswer::RangeNotSatisfiable { len: u.len };
                }
                Ok(Lookup::Absent) => {
                    admission.succeeded();
                    m.media_step_lookups
                        .with_label_values(&[name, "miss"])
                        .inc();
                    absent_from.push(name.clone());
                }
                Err(e) => {
                    admission.failed();
                    m.media_step_lookups
                        .with_label_values(&[name, "error"])
                        .inc();
                    tracing::warn!(store = %name, key = %key, error = %e, kind = e.kind(), "media store failed; trying the next");
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() {
            ChainAnswer::NotFound
        } else {
            ChainAnswer::Failed { errors }
        }
    }
}

/// The body as the place sends it, ended with an error if it carries more or fewer bytes
/// than announced. Holds the place's admission while the body is read, and reports to its
/// breaker: success at the last announced byte (the HTTP server stops reading there),
/// failure if the body breaks off.
fn checked_body(body: BodyStream, expected: u64, admission: Admission, store: &str) -> BodyStream {
    struct State {
        body: BodyStream,
        left: u64,
        admission: Option<Admission>,
        store: String,
    }
    let mut admission = admission;
    if expected == 0 {
        admission.succeeded();
    }
    let state = State {
        body,
        left: expected,
        admission: Some(admission),
        store: store.to_string(),
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            let mut admission = state.admission.take()?;
            let failure = match state.body.next().await {
                Some(Ok(chunk)) if chunk.len() as u64 <= state.left => {
                    state.left -= chunk.len() as u64;
                    if state.left == 0 && !chunk.is_empty() {
                        admission.succeeded();
                    }
                    state.admission = Some(admission);
                    return Some((Ok::<Bytes, std::io::Error>(chunk), state));
                }
                Some(Ok(_)) => std::io::Error::other("the body is longer than announced"),
                Some(Err(e)) => e,
                None if state.left == 0 => return None,
                None => std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the body ended {} bytes early", state.left),
                ),
            };
            admission.failed();
            tracing::warn!(store = %state.store, error = %failure, "media body broke off");
            Some((Err(failure), state))
        },
    ))
}
