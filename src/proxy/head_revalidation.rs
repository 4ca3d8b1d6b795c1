//! A `HEAD` that finds its stored response stale is revalidated with a `HEAD`, not with
//! the `GET` pingora makes of every request that fills the cache (RFC 9111 §4.3.5): a
//! client that asked for the header alone should not cost the core the whole body. A
//! `304` freshens the stored response as for a `GET`. A `200` that describes the stored
//! response freshens it too, and the client gets the freshened header. A `200` that does
//! not leaves the stored response stale and is passed on as it came.
//!
//! Like pingora's own `304` path, the freshened header is written over whatever body is
//! stored under the key at that moment: a `GET` that took over the fill after this
//! request's cache lock expired could have replaced it in between. A response to a
//! `HEAD` has no body, so it is never stored itself.

use http::Method;
use pingora::cache::storage::{PurgeTarget, PurgeType};
use pingora::cache::trace::Span;
use pingora::cache::{NoCacheReason, RespCacheable, Storage};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use super::context::RequestContext;
use super::EdgeProxy;
use crate::cache::freshen::{freshen, head_describes_stored, refreshed};

/// Why the answer to a `HEAD` revalidation is not stored. Not an origin's refusal, so
/// pingora's predictor does not remember the URL as uncacheable.
pub(super) const NOT_STORED: NoCacheReason = NoCacheReason::Deferred;

impl EdgeProxy {
    /// Sends a `HEAD` on as a `HEAD` when it revalidates a stored response.
    pub(super) fn revalidate_head_with_head(
        &self,
        session: &Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) {
        if session.req_header().method == Method::HEAD
            && session.cache.enabled()
            && session.cache.maybe_cache_meta().is_some()
        {
            upstream_request.set_method(Method::HEAD);
            ctx.head_revalidation = true;
        }
    }

    /// Applies the core's `200` to a `HEAD` revalidation to the stored response, and puts
    /// the freshened header in its place when it describes the stored one.
    pub(super) async fn freshen_with_head_answer(
        &self,
        session: &Session,
        answer: &mut ResponseHeader,
        ctx: &RequestContext,
    ) {
        if !ctx.head_revalidation || answer.status != http::StatusCode::OK {
            return;
        }
        let (Some(cache), Some(stored)) = (&self.shared.cache, session.cache.maybe_cache_meta())
        else {
            return;
        };
        // A changed resource: the stored response is stale already (which is why it is
        // revalidated) and stays as it is, its stale-if-error window intact.
        if !head_describes_stored(stored.response_header(), answer) {
            return;
        }
        let key = session.cache.cache_key();
        let freshened = freshen(stored.response_header(), answer);
        match self.keepable(&freshened, ctx) {
            RespCacheable::Cacheable(fresh) => {
                cache
                    .storage
                    .update_stored_meta(key, &refreshed(stored, &fresh));
            }
            // The core no longer lets it be stored: nor may it stand in for an error later.
            RespCacheable::Uncacheable(_) => {
                let compact = key.to_compact();
                let removed = cache
                    .storage
                    .purge(
                        PurgeTarget::Active(&compact),
                        PurgeType::Invalidation,
                        &Span::inactive().handle(),
                    )
                    .await;
                if let Err(e) = removed {
                    tracing::warn!(error = %e, "cannot remove a response its core made unstorable");
                }
            }
        }
        *answer = freshened;
    }
}
