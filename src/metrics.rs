//! Every Prometheus metric edgecache exports, declared in one place.
//!
//! The metrics live in one registry built on first use; [`gather_text`] renders it for the
//! admin listener's `/metrics`. Names follow Prometheus conventions: `_total` for counters,
//! base units (seconds, bytes), and labels with small, bounded value sets (listener and group
//! names come from the config, never from requests).

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by listener and status class (`2xx`, `4xx`, ...).
    pub requests: IntCounterVec,
    /// Response body bytes sent to clients, by listener.
    pub response_bytes: IntCounterVec,
    /// Requests refused before proxying, by reason (`uri_too_long`, `headers_too_large`,
    /// `conflicting_framing`, `asterisk_target`, `bad_target`, `header_timeout`).
    pub rejected_requests: IntCounterVec,
    /// Client connections open now, by listener (counted once TLS, if any, is established).
    pub open_connections: IntGaugeVec,
    /// Client connections accepted since start, by listener.
    pub connections: IntCounterVec,
    /// Client connections closed at once because the listener was at `max_connections`.
    pub connections_refused: IntCounterVec,
    /// Requests answered 429 by a route's `client_limit`, by listener, route (its
    /// configured path) and limit (`requests`, `concurrent`); never by client.
    pub client_limited: IntCounterVec,
    /// TLS ClientHellos received, by listener. Hellos minus completed handshakes is the
    /// number of handshakes that failed or were abandoned after the hello.
    pub tls_client_hellos: IntCounterVec,
    /// TLS handshakes completed, by listener and protocol version.
    pub tls_handshakes: IntCounterVec,
    /// When each served certificate expires (Unix seconds), by listener and its first name.
    pub tls_certificate_expiry: IntGaugeVec,
    /// Seconds from sending a request to the core to receiving its response header, by
    /// group and host.
    pub upstream_response_seconds: HistogramVec,
    /// Responses from the core, by group, host and status class.
    pub upstream_responses: IntCounterVec,
    /// Body bytes to and from the core, by group and direction (`up`, `down`).
    pub upstream_body_bytes: IntCounterVec,
    /// Websockets open through the edge now, by group.
    pub open_websockets: IntGaugeVec,
    /// Websockets ended with a going-away close (1001) because the edge shut down or
    /// handed over to a new binary.
    pub websockets_closed_going_away: IntCounter,
    /// Failed attempts to reach the core, by group, host (empty for `no_healthy_host`) and
    /// kind (`connect`, `connect_timeout`, `timeout`, `no_healthy_host`, `other`).
    pub upstream_errors: IntCounterVec,
    /// Requests sent to another host after a failure that sent nothing, by group.
    pub upstream_retries: IntCounterVec,
    /// 1 while a core host is out of rotation after a failed request (until its next
    /// passing health check), by group and host.
    pub core_host_ejected: IntGaugeVec,
    /// 1 when the health check finds a core host reachable, 0 when not, by group and host.
    pub core_host_up: IntGaugeVec,
    /// Embedded mesh mode: 1 while the node inside edgecache is connected to the tailnet.
    pub mesh_connected: IntGauge,
    /// Embedded mesh mode: attempts to join the tailnet, by outcome (`connected`,
    /// `timeout`, `error`, `not_authorized`).
    pub mesh_start_attempts: IntCounterVec,
    /// Embedded mesh mode: connections to the core the mesh could not open, by kind
    /// (`not_connected`, `unknown_peer`, `connect`, `timeout`).
    pub mesh_connect_errors: IntCounterVec,
    /// Certificate and config reloads, by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Graceful upgrades whose new process exited before taking over (the old one kept
    /// serving).
    pub upgrade_failures: IntCounter,
    /// Constant 1, labelled with the running version.
    pub build_info: IntGaugeVec,
    /// Cacheable-route requests by how the cache answered (`HIT`, `MISS`, `STALE`,
    /// `REVALIDATED`, `BYPASS`, `EXPIRED`).
    pub cache_responses: IntCounterVec,
    /// Lookups answered by a tier (`memory`, `disk`, `fill` for an object still arriving).
    pub cache_tier_hits: IntCounterVec,
    /// Lookups a tier could not answer.
    pub cache_tier_misses: IntCounterVec,
    /// Body bytes read out of a tier for clients.
    pub cache_tier_read_bytes: IntCounterVec,
    /// Body bytes written into a tier.
    pub cache_tier_written_bytes: IntCounterVec,
    /// Bytes a tier holds now (bodies and metadata); for `disk`, the directory's usage.
    pub cache_tier_bytes: IntGaugeVec,
    /// Objects a tier holds now.
    pub cache_tier_objects: IntGaugeVec,
    /// Objects a tier dropped to stay within its size.
    pub cache_tier_evictions: IntCounterVec,
    /// Disk entries found truncated, damaged or from an old format, and removed.
    pub cache_disk_corrupt: IntCounter,
    /// Requests that waited for another request's fetch of the same object.
    pub cache_lock_waits: IntCounter,
    /// Seconds those requests waited.
    pub cache_lock_wait_seconds: prometheus::Histogram,
    /// Objects removed by purge requests, by kind (`url`, `prefix`).
    pub cache_purged_objects: IntCounterVec,
    /// Purge requests applied here, by source (`admin`, `peer`, `cache_buster`).
    pub purges_received: IntCounterVec,
    /// Attempts to hand a purge to another PoP, by peer and result (`ok`, `error`).
    pub fleet_deliveries: IntCounterVec,
    /// Purges waiting for a peer that has not taken them yet, by peer.
    pub fleet_pending_purges: IntGaugeVec,
    /// Purges applied here because a peer's purge log had them and this PoP did not, by
    /// peer (missed while this PoP was down or cut off).
    pub fleet_catch_up_purges: IntCounterVec,
    /// Reads of a peer's purge log that failed, by peer.
    pub fleet_catch_up_errors: IntCounterVec,
    /// A peer's purge log no longer held every purge after this PoP's cursor, by peer.
    pub fleet_catch_up_gaps: IntCounterVec,
    /// Media chain steps, by store and outcome (`hit`, `miss`, `error`, `shed` when the
    /// store's concurrency limit or open circuit refused the request).
    pub media_step_lookups: IntCounterVec,
    /// Seconds a media store took to answer (until its response head), by store.
    pub media_step_seconds: HistogramVec,
    /// Media requests by how the chain answered (`found`, `not_found`, `error`, `bad_key`).
    pub media_responses: IntCounterVec,
    /// 1 while a store's circuit is open (requests to it are not sent), by store.
    pub media_store_circuit_open: IntGaugeVec,
    /// Media keys whose media was deleted (tombstones kept now).
    pub media_tombstones: IntGauge,
    /// Lookups of tombstoned keys, which asked the write-through stores only.
    pub media_tombstoned_lookups: IntCounter,
    /// Write-through jobs by event: `queued`, `done`, `failed` (set aside after
    /// `max_attempts`), `dropped` (the queue was full), `too_large`, `tombstoned` (the
    /// media was deleted before the copy went out).
    pub write_through_jobs: IntCounterVec,
    /// Jobs waiting or arriving now.
    pub write_through_queue_jobs: IntGauge,
    /// Bytes of their bodies.
    pub write_through_queue_bytes: IntGauge,
    /// Bytes uploaded by write-through, by store.
    pub write_through_uploaded_bytes: IntCounterVec,
    /// Failed upload attempts (each is retried), by store.
    pub write_through_upload_errors: IntCounterVec,
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

impl Metrics {
    // The names and label sets below are constants: a failure here is a programming error
    // caught by the first test that starts the server, never a runtime condition.
    fn new() -> Self {
        let registry = Registry::new();
        let upstream_response_seconds = HistogramVec::new(
            HistogramOpts::new(
                "edgecache_upstream_response_seconds",
                "Seconds from sending a request to the core to receiving its response header.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["group", "host"],
        )
        .unwrap_or_else(|e| panic!("histogram is malformed: {e}"));
        registry
            .register(Box::new(upstream_response_seconds.clone()))
            .unwrap_or_else(|e| panic!("histogram registered twice: {e}"));
        let access_log_dropped = counter(
            &registry,
            "edgecache_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind.",
        );
        let upgrade_failures = counter(
            &registry,
            "edgecache_upgrade_failures_total",
            "Graceful upgrades whose new process exited before taking over.",
        );

        let cache_disk_corrupt = counter(
            &registry,
            "edgecache_cache_disk_corrupt_total",
            "Disk entries found truncated, damaged or from an old format, and removed.",
        );
        let cache_lock_waits = counter(
            &registry,
            "edgecache_cache_lock_waits_total",
            "Requests that waited for another request's fetch of the same object.",
        );
        let cache_lock_wait_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "edgecache_cache_lock_wait_seconds",
                "Seconds a request waited for another request's fetch of the same object.",
            )
            .buckets(vec![
                0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("histogram is malformed: {e}"));
        registry
            .register(Box::new(cache_lock_wait_seconds.clone()))
            .unwrap_or_else(|e| panic!("histogram registered twice: {e}"));

        let media_step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "edgecache_media_step_seconds",
                "Seconds a media store took to answer, until its response head.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["store"],
        )
        .unwrap_or_else(|e| panic!("histogram is malformed: {e}"));
        registry
            .register(Box::new(media_step_seconds.clone()))
            .unwrap_or_else(|e| panic!("histogram registered twice: {e}"));

        let metrics = Metrics {
            requests: counter_vec(
                &registry,
                "edgecache_requests_total",
                "Requests answered, by listener and status class.",
                &["listener", "status_class"],
            ),
            response_bytes: counter_vec(
                &registry,
                "edgecache_response_body_bytes_total",
                "Response body bytes sent to clients.",
                &["listener"],
            ),
            rejected_requests: counter_vec(
                &registry,
                "edgecache_rejected_requests_total",
                "Requests refused before proxying, by reason.",
                &["listener", "reason"],
            ),
            open_connections: gauge_vec(
                &registry,
                "edgecache_open_connections",
                "Client connections open now.",
                &["listener"],
            ),
            connections: counter_vec(
                &registry,
                "edgecache_connections_total",
                "Client connections accepted since start.",
                &["listener"],
            ),
            connections_refused: counter_vec(
                &registry,
                "edgecache_connections_refused_total",
                "Client connections closed at once because the listener was full.",
                &["listener"],
            ),
            client_limited: counter_vec(
                &registry,
                "edgecache_client_limited_total",
                "Requests refused with 429 by a route's per-client limit.",
                &["listener", "route", "limit"],
            ),
            tls_client_hellos: counter_vec(
                &registry,
                "edgecache_tls_client_hellos_total",
                "TLS ClientHellos received; minus completed handshakes, the failed or abandoned ones.",
                &["listener"],
            ),
            tls_handshakes: counter_vec(
                &registry,
                "edgecache_tls_handshakes_total",
                "TLS handshakes completed, by protocol version.",
                &["listener", "version"],
            ),
            tls_certificate_expiry: gauge_vec(
                &registry,
                "edgecache_tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires, in Unix seconds.",
                &["listener", "name"],
            ),
            upstream_response_seconds,
            upstream_responses: counter_vec(
                &registry,
                "edgecache_upstream_responses_total",
                "Responses from the core, by group, host and status class.",
                &["group", "host", "status_class"],
            ),
            upstream_body_bytes: counter_vec(
                &registry,
                "edgecache_upstream_body_bytes_total",
                "Body bytes to and from the core, by direction.",
                &["group", "direction"],
            ),
            open_websockets: gauge_vec(
                &registry,
                "edgecache_open_websockets",
                "Websockets open through the edge now.",
                &["group"],
            ),
            upstream_errors: counter_vec(
                &registry,
                "edgecache_upstream_errors_total",
                "Failed attempts to reach the core, by host and kind.",
                &["group", "host", "kind"],
            ),
            upstream_retries: counter_vec(
                &registry,
                "edgecache_upstream_retries_total",
                "Requests sent to another host after a failure that sent nothing.",
                &["group"],
            ),
            core_host_ejected: gauge_vec(
                &registry,
                "edgecache_core_host_ejected",
                "1 while a core host is out of rotation after a failed request.",
                &["group", "host"],
            ),
            core_host_up: gauge_vec(
                &registry,
                "edgecache_core_host_up",
                "1 when the health check finds the core host reachable.",
                &["group", "host"],
            ),
            websockets_closed_going_away: counter(
                &registry,
                "edgecache_websockets_closed_going_away_total",
                "Websockets ended with a going-away close because the edge shut down.",
            ),
            purges_received: counter_vec(
                &registry,
                "edgecache_purges_received_total",
                "Purge requests applied here, by source.",
                &["source"],
            ),
            fleet_deliveries: counter_vec(
                &registry,
                "edgecache_fleet_purge_deliveries_total",
                "Attempts to hand a purge to another PoP, by peer and result.",
                &["peer", "result"],
            ),
            fleet_catch_up_purges: counter_vec(
                &registry,
                "edgecache_fleet_catch_up_purges_total",
                "Purges applied here from a peer's purge log, by peer.",
                &["peer"],
            ),
            fleet_catch_up_errors: counter_vec(
                &registry,
                "edgecache_fleet_catch_up_errors_total",
                "Reads of a peer's purge log that failed, by peer.",
                &["peer"],
            ),
            fleet_catch_up_gaps: counter_vec(
                &registry,
                "edgecache_fleet_catch_up_gaps_total",
                "Times a peer's purge log had dropped purges this PoP had not read, by peer.",
                &["peer"],
            ),
            fleet_pending_purges: gauge_vec(
                &registry,
                "edgecache_fleet_pending_purges",
                "Purges waiting for a peer that has not taken them yet.",
                &["peer"],
            ),
            mesh_connected: gauge(
                &registry,
                "edgecache_mesh_connected",
                "Embedded mesh: 1 while the node inside edgecache is connected to the tailnet.",
            ),
            mesh_start_attempts: counter_vec(
                &registry,
                "edgecache_mesh_start_attempts_total",
                "Embedded mesh: attempts to join the tailnet, by outcome.",
                &["outcome"],
            ),
            mesh_connect_errors: counter_vec(
                &registry,
                "edgecache_mesh_connect_errors_total",
                "Embedded mesh: connections to the core the mesh could not open, by kind.",
                &["kind"],
            ),
            reloads: counter_vec(
                &registry,
                "edgecache_reloads_total",
                "Certificate and config reloads, by result.",
                &["result"],
            ),
            access_log_dropped,
            upgrade_failures,
            build_info: gauge_vec(
                &registry,
                "edgecache_build_info",
                "Constant 1, labelled with the running version.",
                &["version"],
            ),
            cache_responses: counter_vec(
                &registry,
                "edgecache_cache_responses_total",
                "Requests on cacheable routes, by cache status.",
                &["status"],
            ),
            cache_tier_hits: counter_vec(
                &registry,
                "edgecache_cache_tier_hits_total",
                "Lookups answered by a tier.",
                &["tier"],
            ),
            cache_tier_misses: counter_vec(
                &registry,
                "edgecache_cache_tier_misses_total",
                "Lookups a tier could not answer.",
                &["tier"],
            ),
            cache_tier_read_bytes: counter_vec(
                &registry,
                "edgecache_cache_tier_read_bytes_total",
                "Body bytes read out of a tier for clients.",
                &["tier"],
            ),
            cache_tier_written_bytes: counter_vec(
                &registry,
                "edgecache_cache_tier_written_bytes_total",
                "Body bytes written into a tier.",
                &["tier"],
            ),
            cache_tier_bytes: gauge_vec(
                &registry,
                "edgecache_cache_tier_bytes",
                "Bytes a tier holds now.",
                &["tier"],
            ),
            cache_tier_objects: gauge_vec(
                &registry,
                "edgecache_cache_tier_objects",
                "Objects a tier holds now.",
                &["tier"],
            ),
            cache_tier_evictions: counter_vec(
                &registry,
                "edgecache_cache_tier_evictions_total",
                "Objects a tier dropped to stay within its size.",
                &["tier"],
            ),
            cache_disk_corrupt,
            cache_lock_waits,
            cache_lock_wait_seconds,
            cache_purged_objects: counter_vec(
                &registry,
                "edgecache_cache_purged_objects_total",
                "Objects removed by purge requests.",
                &["kind"],
            ),
            media_step_lookups: counter_vec(
                &registry,
                "edgecache_media_step_lookups_total",
                "Media chain steps, by store and outcome.",
                &["store", "outcome"],
            ),
            media_step_seconds,
            media_responses: counter_vec(
                &registry,
                "edgecache_media_responses_total",
                "Media requests by how the chain answered.",
                &["result"],
            ),
            media_store_circuit_open: gauge_vec(
                &registry,
                "edgecache_media_store_circuit_open",
                "1 while requests to the store are held back after repeated failures.",
                &["store"],
            ),
            media_tombstones: gauge(
                &registry,
                "edgecache_media_tombstones",
                "Media keys whose media was deleted, kept as tombstones.",
            ),
            media_tombstoned_lookups: counter(
                &registry,
                "edgecache_media_tombstoned_lookups_total",
                "Lookups of deleted media keys, which asked the write-through stores only.",
            ),
            write_through_jobs: counter_vec(
                &registry,
                "edgecache_write_through_jobs_total",
                "Write-through jobs by event.",
                &["event"],
            ),
            write_through_queue_jobs: gauge(
                &registry,
                "edgecache_write_through_queue_jobs",
                "Write-through jobs waiting or arriving now.",
            ),
            write_through_queue_bytes: gauge(
                &registry,
                "edgecache_write_through_queue_bytes",
                "Bytes of the write-through jobs waiting or arriving now.",
            ),
            write_through_uploaded_bytes: counter_vec(
                &registry,
                "edgecache_write_through_uploaded_bytes_total",
                "Bytes uploaded by write-through, by store.",
                &["store"],
            ),
            write_through_upload_errors: counter_vec(
                &registry,
                "edgecache_write_through_upload_errors_total",
                "Failed write-through upload attempts, by store.",
                &["store"],
            ),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics
    }
}

/// Renders every metric in the Prometheus text format.
pub fn gather_text() -> Result<String, prometheus::Error> {
    let families = get().registry.gather();
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
