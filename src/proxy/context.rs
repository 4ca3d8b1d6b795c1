//! What the proxy keeps about one request while its hooks run.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::body_coding::{BodyWork, CodingPlan};
use super::client_limits::InFlight;
use super::route::RouteDecision;
use super::ProxySettings;
use crate::cache::partial::{Completion, StoredSpan};
use crate::cache::slices::SliceOrder;
use crate::cache::CacheStatus;
use crate::origin::handoff::Ticket;
use crate::upstream::CoreGroup;

/// Per-request state.
pub struct RequestContext {
    pub(super) started: Instant,
    pub(super) started_at: SystemTime,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) group: Option<Arc<CoreGroup>>,
    /// Core hosts that failed this request (refused the connect, or broke the connection
    /// before answering), so a retry goes elsewhere.
    pub(super) failed_hosts: Vec<SocketAddr>,
    /// The embedded mesh was not connected, so no host was tried.
    pub(super) mesh_down: bool,
    /// A plain HTTP/2 request's spelling as it arrived (`FastHits::note_h2_request`).
    pub(super) h2_spelling: Option<Box<super::fast_hits::Spelling>>,
    /// The host of the current attempt.
    pub(super) current_host: Option<SocketAddr>,
    /// Where the request stands with its route's shield.
    pub(super) shield: ShieldState,
    pub(super) upstream_label: String,
    pub(super) upstream_sent: Option<Instant>,
    pub(super) upstream_status: Option<u16>,
    /// The status we answered with ourselves (refusals, errors), when pingora did not write
    /// an upstream response.
    pub(super) own_status: Option<u16>,
    /// How the cache took part; `None` when caching is off for this PoP.
    pub(super) cache_status: Option<CacheStatus>,
    /// The primary cache key, set when this request uses the cache.
    pub(super) cache_key: Option<String>,
    /// The key form of the host an unsafe request (POST, PUT, ...) was for, and whether
    /// its scheme is https: a successful answer invalidates what it names there.
    pub(super) invalidates_on: Option<(String, bool)>,
    /// A stored response for the URL was found but its variants were looked through: a
    /// miss then is a vary-miss.
    pub(super) variant_looked_up: bool,
    /// The core's `304` to a revalidation, whose fields freshen the stored response.
    pub(super) not_modified: Option<Box<pingora::http::ResponseHeader>>,
    /// A `HEAD` revalidating a stored response went on as a `HEAD`: its answer has no
    /// body to store.
    pub(super) head_revalidation: bool,
    /// The request sent to the core is a `HEAD`: no body comes back.
    pub(super) upstream_head: bool,
    /// The coding of the response, decided from `Accept-Encoding`; `None` when the PoP
    /// codes nothing on this request.
    pub(super) coding_plan: Option<CodingPlan>,
    /// The encoding or decoding of the body on its way in.
    pub(super) body_work: Option<BodyWork>,
    /// The response is not in its variant's coding (passed on or left unencoded): not
    /// stored.
    pub(super) coding_not_storable: bool,
    /// The length the core stated for a body the PoP codes (the coded one has none).
    pub(super) coded_from_length: Option<u64>,
    /// The settings this request runs under, taken once so a reload cannot change them
    /// halfway through it.
    pub(super) settings: Option<Arc<ProxySettings>>,
    /// The request's route, decided once in `request_filter`.
    pub(super) route: RouteDecision,
    /// The route lodged with the media origin while this media request is in flight.
    pub(super) media_ticket: Option<Ticket>,
    /// `X-Request-Id`, the client's or ours.
    pub(super) request_id: String,
    /// Request body bytes read from the client so far.
    pub(super) body_bytes: u64,
    /// The request asks for a websocket.
    pub(super) websocket: bool,
    /// Counted in `edgecache_open_websockets` until the request ends.
    pub(super) websocket_open: bool,
    /// This request's place in its client's in-flight count, given back when it ends.
    pub(super) client_slot: Option<InFlight>,
    /// A subrequest for one slice of a large object (`slice_fill`).
    pub(super) slice_fill: Option<SliceOrder>,
    /// The answer was put together from slices (`slicing`).
    pub(super) served_from_slices: bool,
    /// A stored span of the object answers this request (`partial`).
    pub(super) stored_span: Option<StoredSpan>,
    /// A stored span of the object falls short of this request (`partial`).
    pub(super) span_short: bool,
    /// A stored start of the object being completed with the rest (`partial`).
    pub(super) completion: Option<Completion>,
    /// The stored start, put before the rest's body once the rest is on its way.
    pub(super) held_prefix: Option<bytes::Bytes>,
    /// The client closed the stream before the request was decided: it is not forwarded.
    pub(super) client_gone: bool,
    /// Body bytes the core sent, when `direct` forwarded the request (pingora counts
    /// its own path's).
    pub(super) upstream_body_received: Option<u64>,
}

impl RequestContext {
    /// A request that has just begun: no route, no host, nothing counted yet.
    pub(super) fn new() -> RequestContext {
        RequestContext {
            started: Instant::now(),
            started_at: SystemTime::now(),
            client_ip: None,
            group: None,
            failed_hosts: Vec::new(),
            mesh_down: false,
            h2_spelling: None,
            current_host: None,
            shield: Default::default(),
            upstream_label: String::new(),
            upstream_sent: None,
            upstream_status: None,
            own_status: None,
            cache_status: None,
            cache_key: None,
            not_modified: None,
            head_revalidation: false,
            upstream_head: false,
            coding_plan: None,
            body_work: None,
            coding_not_storable: false,
            coded_from_length: None,
            variant_looked_up: false,
            invalidates_on: None,
            settings: None,
            route: RouteDecision::default(),
            media_ticket: None,
            request_id: String::new(),
            body_bytes: 0,
            websocket: false,
            websocket_open: false,
            client_slot: None,
            slice_fill: None,
            served_from_slices: false,
            stored_span: None,
            span_short: false,
            completion: None,
            held_prefix: None,
            client_gone: false,
            upstream_body_received: None,
        }
    }
}

/// Where one request stands with its route's shield.
#[derive(Default)]
pub(super) struct ShieldState {
    /// The request came on a shield hop (or says so): it takes none itself.
    pub(super) arrived_by_hop: bool,
    pub(super) group: Option<Arc<CoreGroup>>,
    /// The shield host this attempt went to.
    pub(super) current: Option<SocketAddr>,
    /// Shield hosts that failed this request.
    pub(super) failed: Vec<SocketAddr>,
    /// Pooled connections to a shield found closed (by the shield, while idle) so far.
    pub(super) closed_idle: u8,
}
