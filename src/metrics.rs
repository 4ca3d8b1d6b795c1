//! Every Prometheus metric edgecache exports, declared in one place.
//!
//! The metrics live in one registry built on first use; [`gather_text`] renders it for the
//! admin listener's `/metrics`. Names follow Prometheus conventions: `_total` for counters,
//! base units (seconds, bytes), and labels with small, bounded value sets (listener and group
//! names come from the config, never from requests).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Declares the metrics: each field with its doc, type and how it is registered, so the
/// struct and its one registry cannot drift apart. The names and label sets are constants:
/// a malformed one is a programming error caught by the first test that starts the server,
/// never a runtime condition.
macro_rules! metrics {
    ($($(#[$doc:meta])* $field:ident: $type:ty = $make:ident($($arg:expr),* $(,)?);)*) => {
        pub struct Metrics {
            registry: Registry,
            $($(#[$doc])* pub $field: $type,)*
        }

        impl Metrics {
            fn new() -> Self {
                let registry = Registry::new();
                let metrics = Metrics {
                    $($field: $make(&registry, $($arg),*),)*
                    registry,
                };
                metrics
                    .build_info
                    .with_label_values(&[env!("CARGO_PKG_VERSION")])
                    .set(1);
                // Every coding's series from the start, at 0: a rate over them is defined
                // before the first compressed response.
                for operation in ["encode", "decode"] {
                    for coding in ["zstd", "br", "gzip"] {
                        for side in ["in", "out"] {
                            metrics.coded_bytes.with_label_values(&[operation, coding, side]);
                        }
                    }
                }
                for reason in ["busy", "too_large", "corrupt"] {
                    metrics.coding_skipped.with_label_values(&[reason]);
                }
                metrics
            }
        }
    };
}

metrics! {
    /// Requests answered, by listener and status class (`2xx`, `4xx`, ...).
    requests: IntCounterVec = counter_vec(
        "edgecache_requests_total",
        "Requests answered, by listener and status class.",
        &["listener", "status_class"],
    );
    /// Response body bytes sent to clients, by listener.
    response_bytes: IntCounterVec = counter_vec(
        "edgecache_response_body_bytes_total",
        "Response body bytes sent to clients.",
        &["listener"],
    );
    /// Hits answered from the HTTP/1 connection loop with a stored response head (also
    /// counted in `edgecache_requests_total` and the cache counters), by listener.
    fast_hits: IntCounterVec = counter_vec(
        "edgecache_fast_hits_total",
        "Hits answered from the connection loop with a stored response head.",
        &["listener"],
    );
    /// Requests refused before proxying, by reason (`uri_too_long`, `headers_too_large`,
    /// `conflicting_framing`, `asterisk_target`, `bad_target`, `header_timeout`,
    /// `shield_listener`: what a shield listener does not take).
    rejected_requests: IntCounterVec = counter_vec(
        "edgecache_rejected_requests_total",
        "Requests refused before proxying, by reason.",
        &["listener", "reason"],
    );
    /// Client connections open now, by listener (counted once TLS, if any, is established).
    open_connections: IntGaugeVec = gauge_vec(
        "edgecache_open_connections",
        "Client connections open now.",
        &["listener"],
    );
    /// Client connections accepted since start, by listener.
    connections: IntCounterVec = counter_vec(
        "edgecache_connections_total",
        "Client connections accepted since start.",
        &["listener"],
    );
    /// Client connections closed at once because the listener was at `max_connections`.
    connections_refused: IntCounterVec = counter_vec(
        "edgecache_connections_refused_total",
        "Client connections closed at once because the listener was full.",
        &["listener"],
    );
    /// Requests answered 429 by a route's `client_limit`, by listener, route (its
    /// configured path) and limit (`requests`, `concurrent`); never by client.
    client_limited: IntCounterVec = counter_vec(
        "edgecache_client_limited_total",
        "Requests refused with 429 by a route's per-client limit.",
        &["listener", "route", "limit"],
    );
    /// TLS ClientHellos received, by listener. Hellos minus completed handshakes is the
    /// number of handshakes that failed or were abandoned after the hello.
    tls_client_hellos: IntCounterVec = counter_vec(
        "edgecache_tls_client_hellos_total",
        "TLS ClientHellos received; minus completed handshakes, the failed or abandoned ones.",
        &["listener"],
    );
    /// TLS handshakes completed, by listener and protocol version.
    tls_handshakes: IntCounterVec = counter_vec(
        "edgecache_tls_handshakes_total",
        "TLS handshakes completed, by protocol version.",
        &["listener", "version"],
    );
    /// When each served certificate expires (Unix seconds), by listener and its first name.
    tls_certificate_expiry: IntGaugeVec = gauge_vec(
        "edgecache_tls_certificate_expiry_timestamp_seconds",
        "When each served certificate expires, in Unix seconds.",
        &["listener", "name"],
    );
    /// Seconds from sending a request to the core to receiving its response header, by
    /// group and host.
    upstream_response_seconds: HistogramVec = histogram_vec(
        "edgecache_upstream_response_seconds",
        "Seconds from sending a request to the core to receiving its response header.",
        &["group", "host"],
        &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    );
    /// Responses from the core, by group, host and status class.
    upstream_responses: IntCounterVec = counter_vec(
        "edgecache_upstream_responses_total",
        "Responses from the core, by group, host and status class.",
        &["group", "host", "status_class"],
    );
    /// Responses from the core to requests forwarded over edgecache's own connections
    /// (body-less, no cache; `proxy::direct`), by group. The rest of
    /// `edgecache_upstream_responses_total` came through pingora's upstream path.
    direct_forwards: IntCounterVec = counter_vec(
        "edgecache_direct_forwards_total",
        "Responses from the core to requests forwarded over edgecache's own connections.",
        &["group"],
    );
    /// Body bytes to and from the core, by group and direction (`up`, `down`).
    upstream_body_bytes: IntCounterVec = counter_vec(
        "edgecache_upstream_body_bytes_total",
        "Body bytes to and from the core, by direction.",
        &["group", "direction"],
    );
    /// Websockets open through the edge now, by group.
    open_websockets: IntGaugeVec = gauge_vec(
        "edgecache_open_websockets",
        "Websockets open through the edge now.",
        &["group"],
    );
    /// Websockets ended with a going-away close (1001) because the edge shut down or
    /// handed over to a new binary.
    websockets_closed_going_away: IntCounter = counter(
        "edgecache_websockets_closed_going_away_total",
        "Websockets ended with a going-away close because the edge shut down.",
    );
    /// Failed attempts to reach the core, by group, host (empty for `no_healthy_host`) and
    /// kind (`connect`, `connect_timeout`, `timeout`, `no_healthy_host`, `other`).
    upstream_errors: IntCounterVec = counter_vec(
        "edgecache_upstream_errors_total",
        "Failed attempts to reach the core, by host and kind.",
        &["group", "host", "kind"],
    );
    /// Requests sent to another host after a failure that sent nothing, by group.
    upstream_retries: IntCounterVec = counter_vec(
        "edgecache_upstream_retries_total",
        "Requests sent to another host after a failure that sent nothing.",
        &["group"],
    );
    /// 1 while a core host is out of rotation after a failed request (until its next
    /// passing health check), by group and host.
    core_host_ejected: IntGaugeVec = gauge_vec(
        "edgecache_core_host_ejected",
        "1 while a core host is out of rotation after a failed request.",
        &["group", "host"],
    );
    /// 1 when the health check finds a core host reachable, 0 when not, by group and host.
    core_host_up: IntGaugeVec = gauge_vec(
        "edgecache_core_host_up",
        "1 when the health check finds the core host reachable.",
        &["group", "host"],
    );
    /// Embedded mesh mode: 1 while the node inside edgecache is connected to the tailnet.
    mesh_connected: IntGauge = gauge(
        "edgecache_mesh_connected",
        "Embedded mesh: 1 while the node inside edgecache is connected to the tailnet.",
    );
    /// Embedded mesh mode: attempts to join the tailnet, by outcome (`connected`,
    /// `timeout`, `error`, `not_authorized`).
    mesh_start_attempts: IntCounterVec = counter_vec(
        "edgecache_mesh_start_attempts_total",
        "Embedded mesh: attempts to join the tailnet, by outcome.",
        &["outcome"],
    );
    /// Embedded mesh mode: connections to the core the mesh could not open, by kind
    /// (`not_connected`, `unknown_peer`, `connect`, `timeout`).
    mesh_connect_errors: IntCounterVec = counter_vec(
        "edgecache_mesh_connect_errors_total",
        "Embedded mesh: connections to the core the mesh could not open, by kind.",
        &["kind"],
    );
    /// Certificate and config reloads, by result (`ok`, `error`).
    reloads: IntCounterVec = counter_vec(
        "edgecache_reloads_total",
        "Certificate and config reloads, by result.",
        &["result"],
    );
    /// Access-log lines dropped because the writer fell behind.
    access_log_dropped: IntCounter = counter(
        "edgecache_access_log_dropped_total",
        "Access-log lines dropped because the writer fell behind.",
    );
    /// Graceful upgrades whose new process exited before taking over (the old one kept
    /// serving).
    upgrade_failures: IntCounter = counter(
        "edgecache_upgrade_failures_total",
        "Graceful upgrades whose new process exited before taking over.",
    );
    /// Constant 1, labelled with the running version.
    build_info: IntGaugeVec = gauge_vec(
        "edgecache_build_info",
        "Constant 1, labelled with the running version.",
        &["version"],
    );
    /// Cacheable-route requests by how the cache answered (`HIT`, `MISS`, `STALE`,
    /// `REVALIDATED`, `BYPASS`, `EXPIRED`).
    cache_responses: IntCounterVec = counter_vec(
        "edgecache_cache_responses_total",
        "Requests on cacheable routes, by cache status.",
        &["status"],
    );
    /// Lookups answered by a tier (`memory`, `disk`, `fill` for an object still arriving).
    cache_tier_hits: IntCounterVec = counter_vec(
        "edgecache_cache_tier_hits_total",
        "Lookups answered by a tier.",
        &["tier"],
    );
    /// Lookups a tier could not answer.
    cache_tier_misses: IntCounterVec = counter_vec(
        "edgecache_cache_tier_misses_total",
        "Lookups a tier could not answer.",
        &["tier"],
    );
    /// Body bytes read out of a tier for clients.
    cache_tier_read_bytes: IntCounterVec = counter_vec(
        "edgecache_cache_tier_read_bytes_total",
        "Body bytes read out of a tier for clients.",
        &["tier"],
    );
    /// Body bytes written into a tier.
    cache_tier_written_bytes: IntCounterVec = counter_vec(
        "edgecache_cache_tier_written_bytes_total",
        "Body bytes written into a tier.",
        &["tier"],
    );
    /// Bytes a tier holds now (bodies and metadata); for `disk`, the directory's usage.
    cache_tier_bytes: IntGaugeVec = gauge_vec(
        "edgecache_cache_tier_bytes",
        "Bytes a tier holds now.",
        &["tier"],
    );
    /// Objects a tier holds now.
    cache_tier_objects: IntGaugeVec = gauge_vec(
        "edgecache_cache_tier_objects",
        "Objects a tier holds now.",
        &["tier"],
    );
    /// Cacheable misses sent to a shield PoP, by shield group and host.
    shield_requests: IntCounterVec = counter_vec(
        "edgecache_shield_requests_total",
        "Cacheable misses sent to a shield PoP, by shield group and host.",
        &["group", "shield"],
    );
    /// Requests that went on without their shield: `connect` (it could not be reached),
    /// `timeout`, `status` (it answered 502 or 503), `purged` (its copy predates a purge
    /// made here), `error` (it failed before answering), `none_left` (no shield host in
    /// rotation).
    shield_skipped: IntCounterVec = counter_vec(
        "edgecache_shield_skipped_total",
        "Requests that went on to their origin without a shield, by reason.",
        &["group", "reason"],
    );
    /// Objects a tier holds with cache tags, each filed in the tier's tag index.
    cache_tier_tagged_objects: IntGaugeVec = gauge_vec(
        "edgecache_cache_tier_tagged_objects",
        "Objects a tier holds with cache tags, filed in its tag index.",
        &["tier"],
    );
    /// Responses not stored because their cache tags were too many or too long.
    cache_tags_refused: IntCounter = counter(
        "edgecache_cache_tags_refused_total",
        "Responses not stored because their cache tags were too many or too long.",
    );
    /// Objects a tier dropped to stay within its size.
    cache_tier_evictions: IntCounterVec = counter_vec(
        "edgecache_cache_tier_evictions_total",
        "Objects a tier dropped to stay within its size.",
        &["tier"],
    );
    /// Disk entries found truncated, damaged or from an old format, and removed.
    cache_disk_corrupt: IntCounter = counter(
        "edgecache_cache_disk_corrupt_total",
        "Disk entries found truncated, damaged or from an old format, and removed.",
    );
    /// Requests that waited for another request's fetch of the same object.
    cache_lock_waits: IntCounter = counter(
        "edgecache_cache_lock_waits_total",
        "Requests that waited for another request's fetch of the same object.",
    );
    /// Seconds those requests waited.
    cache_lock_wait_seconds: Histogram = histogram(
        "edgecache_cache_lock_wait_seconds",
        "Seconds a request waited for another request's fetch of the same object.",
        &[0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    );
    /// Objects removed by purge requests, by kind (`url`, `prefix`, `tag`, `invalidation`:
    /// a successful unsafe request through this PoP; `changed_slices`: the slices of an
    /// object that changed at its origin).
    cache_purged_objects: IntCounterVec = counter_vec(
        "edgecache_cache_purged_objects_total",
        "Objects removed by purge requests and invalidations, by kind.",
        &["kind"],
    );
    /// Body bytes through the PoP's content codings: `operation` is `encode` (compressing
    /// what the core sent unencoded) or `decode` (for a client that takes no coding the
    /// core used), `side` is `in` or `out`.
    coded_bytes: IntCounterVec = counter_vec(
        "edgecache_coded_bytes_total",
        "Body bytes through the PoP's content codings, by operation (encode, decode), coding and side (in, out).",
        &["operation", "coding", "side"],
    );
    /// Responses sent as they came instead of being encoded or decoded, by reason
    /// (`busy`: compression.max_concurrent bodies were being coded; `too_large`: a decoded
    /// body passed compression.max_decoded_size and was cut off; `corrupt`: the core's
    /// encoded body could not be decoded).
    coding_skipped: IntCounterVec = counter_vec(
        "edgecache_coding_skipped_total",
        "Responses not encoded or decoded as planned, by reason (busy, too_large, corrupt).",
        &["reason"],
    );
    /// Slices of large objects looked up, by route and how the cache answered (`hit`,
    /// `miss`, `stale`, `revalidated`, `expired`, `bypass`).
    slices: IntCounterVec = counter_vec(
        "edgecache_slices_total",
        "Slices of large objects looked up, by route and cache outcome.",
        &["route", "outcome"],
    );
    /// Body bytes of slices fetched from the core or the media chain, by route: what the
    /// origin was asked for.
    slice_fetched_bytes: IntCounterVec = counter_vec(
        "edgecache_slice_fetched_bytes_total",
        "Body bytes of slices fetched from the origin, by route.",
        &["route"],
    );
    /// Body bytes sent to clients from slices, by route: set against the bytes fetched,
    /// the share of egress the PoP saved.
    slice_served_bytes: IntCounterVec = counter_vec(
        "edgecache_slice_served_bytes_total",
        "Body bytes sent to clients from slices, by route.",
        &["route"],
    );
    /// Invalidations not passed to the fleet because too many were on their way already.
    invalidations_not_passed_on: IntCounter = counter(
        "edgecache_invalidations_not_passed_on_total",
        "Invalidations not passed to the fleet because too many were on their way already.",
    );
    /// Purge requests applied here, by source (`admin`, `peer`, `cache_buster`).
    purges_received: IntCounterVec = counter_vec(
        "edgecache_purges_received_total",
        "Purge requests applied here, by source.",
        &["source"],
    );
    /// Attempts to hand a purge to another PoP, by peer and result (`ok`, `error`).
    fleet_deliveries: IntCounterVec = counter_vec(
        "edgecache_fleet_purge_deliveries_total",
        "Attempts to hand a purge to another PoP, by peer and result.",
        &["peer", "result"],
    );
    /// Purges waiting for a peer that has not taken them yet, by peer.
    fleet_pending_purges: IntGaugeVec = gauge_vec(
        "edgecache_fleet_pending_purges",
        "Purges waiting for a peer that has not taken them yet.",
        &["peer"],
    );
    /// Purges applied here because a peer's purge log had them and this PoP did not, by
    /// peer (missed while this PoP was down or cut off).
    fleet_catch_up_purges: IntCounterVec = counter_vec(
        "edgecache_fleet_catch_up_purges_total",
        "Purges applied here from a peer's purge log, by peer.",
        &["peer"],
    );
    /// Reads of a peer's purge log that failed, by peer.
    fleet_catch_up_errors: IntCounterVec = counter_vec(
        "edgecache_fleet_catch_up_errors_total",
        "Reads of a peer's purge log that failed, by peer.",
        &["peer"],
    );
    /// A peer's purge log no longer held every purge after this PoP's cursor, by peer.
    fleet_catch_up_gaps: IntCounterVec = counter_vec(
        "edgecache_fleet_catch_up_gaps_total",
        "Times a peer's purge log had dropped purges this PoP had not read, by peer.",
        &["peer"],
    );
    /// Media chain steps, by store and outcome (`hit`, `miss`, `error`, `shed` when the
    /// store's concurrency limit or open circuit refused the request).
    media_step_lookups: IntCounterVec = counter_vec(
        "edgecache_media_step_lookups_total",
        "Media chain steps, by store and outcome.",
        &["store", "outcome"],
    );
    /// Seconds a media store took to answer (until its response head), by store.
    media_step_seconds: HistogramVec = histogram_vec(
        "edgecache_media_step_seconds",
        "Seconds a media store took to answer, until its response head.",
        &["store"],
        &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
    );
    /// Media requests by how the chain answered (`found`, `not_found`, `error`, `bad_key`).
    media_responses: IntCounterVec = counter_vec(
        "edgecache_media_responses_total",
        "Media requests by how the chain answered.",
        &["result"],
    );
    /// 1 while a store's circuit is open (requests to it are not sent), by store.
    media_store_circuit_open: IntGaugeVec = gauge_vec(
        "edgecache_media_store_circuit_open",
        "1 while requests to the store are held back after repeated failures.",
        &["store"],
    );
    /// Media keys whose media was deleted (tombstones kept now).
    media_tombstones: IntGauge = gauge(
        "edgecache_media_tombstones",
        "Media keys whose media was deleted, kept as tombstones.",
    );
    /// Lookups of tombstoned keys, which asked the write-through stores only.
    media_tombstoned_lookups: IntCounter = counter(
        "edgecache_media_tombstoned_lookups_total",
        "Lookups of deleted media keys, which asked the write-through stores only.",
    );
    /// Write-through jobs by event: `queued`, `done`, `failed` (set aside after
    /// `max_attempts`), `dropped` (the queue was full), `too_large`, `tombstoned` (the
    /// media was deleted before the copy went out), `not_kept` (the copy was to be the
    /// cache's file of the body, and the cache did not keep one), `busy` (an object served
    /// in slices was not copied: as many background copies as allowed were running).
    write_through_jobs: IntCounterVec = counter_vec(
        "edgecache_write_through_jobs_total",
        "Write-through jobs by event.",
        &["event"],
    );
    /// Bytes of queued copies by where their local file came from: `stream` (written by
    /// the copy as the body went to the client) or `cache` (the cache's own file of the
    /// body, linked: no byte written twice).
    write_through_copied_bytes: IntCounterVec = counter_vec(
        "edgecache_write_through_copied_bytes_total",
        "Bytes of queued write-through copies by where their local file came from (stream: written by the copy; cache: the cache's file, linked).",
        &["source"],
    );
    /// Jobs waiting or arriving now.
    write_through_queue_jobs: IntGauge = gauge(
        "edgecache_write_through_queue_jobs",
        "Write-through jobs waiting or arriving now.",
    );
    /// Bytes of their bodies.
    write_through_queue_bytes: IntGauge = gauge(
        "edgecache_write_through_queue_bytes",
        "Bytes of the write-through jobs waiting or arriving now.",
    );
    /// Bytes uploaded by write-through, by store.
    write_through_uploaded_bytes: IntCounterVec = counter_vec(
        "edgecache_write_through_uploaded_bytes_total",
        "Bytes uploaded by write-through, by store.",
        &["store"],
    );
    /// Failed upload attempts (each is retried), by store.
    write_through_upload_errors: IntCounterVec = counter_vec(
        "edgecache_write_through_upload_errors_total",
        "Failed write-through upload attempts, by store.",
        &["store"],
    );
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric =
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric =
        IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let metric = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

/// Renders every metric in the Prometheus text format.
pub fn gather_text() -> Result<String, prometheus::Error> {
    let families = get().registry.gather();
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
