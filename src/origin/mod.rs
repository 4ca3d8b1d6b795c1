//! The media chain: a try_files over object stores and legacy origins.
//!
//! A media route lists places by name; [`lookup`] asks them in order and the first
//! that has the object answers. A place that fails (error, timeout, refused by its
//! [`Guard`](crate::store::guard::Guard)) is logged and counted and the next is asked, but a failure is never
//! taken to mean "absent": when nothing had the object and something failed, the answer is
//! a failure (502), not a 404 that the cache would keep.
//!
//! The chain is served to pingora by an in-process HTTP server on loopback
//! ([`server::MediaServer`]), so media misses go through the same cache, lock, range and
//! stale machinery as responses from the core.

pub mod background_copy;
pub mod handoff;
pub mod server;

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use crate::metrics;
use crate::store::guard::Admission;
use crate::store::places::Places;
use crate::store::{BodyStream, ByteRange, Found, Lookup, ObjectKey};

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

/// Asks the places of `chain` in order for `key`.
pub async fn lookup(
    places: &Places,
    chain: &[String],
    key: &ObjectKey,
    range: Option<ByteRange>,
    with_body: bool,
) -> ChainAnswer {
    let m = metrics::get();
    let mut absent_from = Vec::new();
    let mut errors = Vec::new();
    for name in chain {
        let Some(place) = places.guarded(name) else {
            errors.push(format!(
                "{name}: not configured (a reload added it; restart to use it)"
            ));
            continue;
        };
        let Some(mut admission) = place.admit() else {
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
