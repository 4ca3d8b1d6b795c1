//! `sites:`: hosts and their routes, with per-route caching, media and client limits.

use serde::Deserialize;

use super::defaults;
use crate::config::units::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// Host names this site answers for (`*.example.social` matches subdomains); empty or
    /// absent: every host no other site claims.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Fleet peers (by name) a cacheable miss asks before the core or the media chain, on
    /// every route that does not say otherwise.
    #[serde(default)]
    pub shield: Option<Vec<String>>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// A path prefix; the longest matching prefix wins.
    pub path: String,
    /// Fleet peers (by name) a cacheable miss asks first, in place of the site's; `[]`:
    /// none on this route.
    #[serde(default)]
    pub shield: Option<Vec<String>>,
    /// `false`: never cached (websockets, private APIs).
    #[serde(default = "defaults::enabled")]
    pub cache: bool,
    /// How long a response that states no freshness of its own is kept (`Cache-Control`
    /// and `Expires` still win when present).
    #[serde(default)]
    pub cache_ttl: Option<HumanDuration>,
    /// `false`: a response that states no freshness is never kept for a share of the time
    /// since its `Last-Modified` (`cache.heuristic_freshness`) on this route.
    #[serde(default = "defaults::enabled")]
    pub heuristic_freshness: bool,
    /// `false`: responses on this path are never compressed by the PoP (`compression:`),
    /// e.g. where a response reflects a secret next to what a user typed (BREACH).
    #[serde(default = "defaults::enabled")]
    pub compress: bool,
    /// `true`: objects are fetched and stored as aligned slices (`cache.slice_size`), so a
    /// range request fetches only the slices it covers; absent: on for media routes, off
    /// for the others.
    #[serde(default)]
    pub slice: Option<bool>,
    /// This route's slice size; absent: `cache.slice_size`.
    #[serde(default)]
    pub slice_size: Option<ByteSize>,
    /// Serve this path from media places instead of the core.
    #[serde(default)]
    pub media: Option<MediaRouteFile>,
    /// The core upstream group for this path (`streaming` for `/api/v1/streaming`);
    /// absent: `core.default_group`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Request bodies above this size get 413 (uploads: Mastodon takes videos up to
    /// about 100 MB); absent: no limit of the route's own.
    #[serde(default)]
    pub max_body_size: Option<ByteSize>,
    /// What one client address may ask of this route; beyond it, 429 with `Retry-After`.
    #[serde(default)]
    pub client_limit: Option<ClientLimitFile>,
}

/// Per-client limits of a route, counted by client address (the real one, after trusted
/// proxies; an IPv6 client by its /64, as one host usually holds a whole /64).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimitFile {
    /// Requests one client may make per `per` (fixed windows aligned to the clock, as
    /// Mastodon's rack-attack counts).
    #[serde(default)]
    pub requests: Option<u32>,
    #[serde(default)]
    pub per: Option<HumanDuration>,
    /// Requests of one client this route serves at once.
    #[serde(default)]
    pub concurrent: Option<u32>,
    /// Only these methods count (`[POST]` for sign-in forms); absent: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Only requests that carry no credentials count (no `Authorization`, `Cookie` or
    /// HTTP `Signature`), like Mastodon's limit on unauthenticated API calls.
    #[serde(default)]
    pub anonymous_only: bool,
}

/// A media route: the request path after the route's `path` is the object key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaRouteFile {
    /// Store names, tried in order; the first that has the object answers.
    pub chain: Vec<String>,
    /// Object stores that get a copy of what came from any other place, in the
    /// background, once the whole body arrived intact.
    #[serde(default)]
    pub write_through: Vec<String>,
    /// `Cache-Control` on media found (Mastodon's media never change under one URL).
    #[serde(default = "defaults::media_cache_control")]
    pub cache_control: String,
    /// `Cache-Control` on a 404 (when every place said it has no such object).
    #[serde(default = "defaults::media_not_found_cache_control")]
    pub not_found_cache_control: String,
}
