//! What a request leaves behind: its counts, its access-log line, and our own short
//! answers (errors, refusals) with the headers every answer of ours carries.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use prometheus::IntCounter;

use super::{forward, EdgeProxy, RequestContext, RETRY_AFTER_SECONDS};
use crate::access_log::AccessRecord;
use crate::cache::CacheStatus;
use crate::metrics;

/// This listener's per-request counters, looked up once rather than on every request.
pub(super) struct ListenerCounters {
    /// Requests by status class: 1xx ... 5xx.
    requests_by_class: [IntCounter; 5],
    response_bytes: IntCounter,
}

impl ListenerCounters {
    pub(super) fn new(listener: &str) -> Self {
        let m = metrics::get();
        ListenerCounters {
            requests_by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| m.requests.with_label_values(&[listener, class])),
            response_bytes: m.response_bytes.with_label_values(&[listener]),
        }
    }

    pub(super) fn count(&self, status: u16, bytes: usize) {
        if status > 0 {
            let class = usize::from((status / 100).clamp(1, 5)) - 1;
            self.requests_by_class[class].inc();
        }
        self.response_bytes.inc_by(bytes as u64);
    }
}

/// How one slice was found, and what it cost the origin.
fn count_slice(session: &Session, ctx: &RequestContext) {
    let m = metrics::get();
    let route = route_label(ctx);
    let outcome = ctx
        .cache_status
        .map_or("bypass", |status| status.as_str())
        .to_ascii_lowercase();
    m.slices.with_label_values(&[route, &outcome]).inc();
    m.slice_fetched_bytes
        .with_label_values(&[route])
        .inc_by(session.upstream_body_bytes_received() as u64);
}

/// The route's path as a metric label (from the config, so a bounded set).
fn route_label(ctx: &RequestContext) -> &str {
    ctx.route.route().map_or("", |route| route.path.as_str())
}

/// Counts the request and writes its access-log line.
pub(super) fn log_request(
    proxy: &EdgeProxy,
    session: &mut Session,
    e: Option<&Error>,
    ctx: &mut RequestContext,
) {
    if let Some(group) = &ctx.group {
        let m = metrics::get();
        let name = group.name.as_str();
        if ctx.websocket_open {
            ctx.websocket_open = false;
            m.open_websockets.with_label_values(&[name]).dec();
        }
        m.upstream_body_bytes
            .with_label_values(&[name, "up"])
            .inc_by(ctx.body_bytes);
        m.upstream_body_bytes
            .with_label_values(&[name, "down"])
            .inc_by(
                ctx.upstream_body_received
                    .unwrap_or(session.upstream_body_bytes_received() as u64),
            );
    }
    // A slice is a part of its client's request, which is counted and logged itself.
    if ctx.slice_fill.is_some() {
        count_slice(session, ctx);
        return;
    }
    if ctx.served_from_slices {
        metrics::get()
            .slice_served_bytes
            .with_label_values(&[route_label(ctx)])
            .inc_by(session.body_bytes_sent() as u64);
    }
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.own_status)
        .unwrap_or(0);
    let bytes = session.body_bytes_sent();
    proxy.counters.count(status, bytes);
    if !proxy.shared.access_log.enabled() {
        return;
    }

    let req = session.req_header();
    let header = |name: http::header::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let host = req
        .uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_else(|| header(http::header::HOST));
    let client_ip = ctx
        .client_ip
        .or_else(|| client_addr(session).map(|a| a.ip()))
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let record = AccessRecord {
        time: rfc3339(ctx.started_at),
        listener: &proxy.listener,
        client_ip,
        method: req.method.as_str(),
        host,
        path: req.uri.path_and_query().map_or("", |p| p.as_str()),
        protocol: version_name(req.version),
        status,
        bytes,
        duration_ms: rounded_ms(ctx.started),
        upstream: &ctx.upstream_label,
        upstream_status: ctx.upstream_status,
        cache: ctx.cache_status.map_or("", CacheStatus::as_str),
        user_agent: header(http::header::USER_AGENT),
        referer: header(http::header::REFERER),
        error: e.map(|e| e.to_string()),
        request_id: &ctx.request_id,
    };
    proxy.shared.access_log.log(&record);
}

/// Milliseconds since `started`, to the microsecond.
pub(super) fn rounded_ms(started: std::time::Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

pub(super) fn client_addr(session: &Session) -> Option<SocketAddr> {
    session.client_addr().and_then(|a| a.as_inet()).copied()
}

/// Writes a short plain-text response of our own.
pub(super) async fn respond(
    session: &mut Session,
    ctx: &mut RequestContext,
    status: u16,
    body: &'static str,
) -> Result<()> {
    respond_with(
        session,
        ctx,
        status,
        TEXT_PLAIN,
        Bytes::from_static(body.as_bytes()),
    )
    .await
}

/// Writes a short response of our own with the given type and body.
pub(super) async fn respond_with(
    session: &mut Session,
    ctx: &mut RequestContext,
    status: u16,
    content_type: &'static str,
    body: Bytes,
) -> Result<()> {
    // Clients and their users should wait for the next health check, not hammer a core
    // that is struggling.
    let retry_after = matches!(status, 502 | 503).then(|| RETRY_AFTER_SECONDS.to_string());
    respond_retry_after(session, ctx, status, content_type, body, retry_after).await
}

/// 429 for a client past a route's limit, saying when it may try again.
pub(super) async fn respond_too_many(
    session: &mut Session,
    ctx: &mut RequestContext,
    retry_after: std::time::Duration,
) -> Result<()> {
    // Whole seconds, rounded up: retrying at the stated time must succeed.
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let body = Bytes::from_static(b"429 too many requests\n");
    let retry_after = Some(secs.max(1).to_string());
    respond_retry_after(session, ctx, 429, TEXT_PLAIN, body, retry_after).await
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

async fn respond_retry_after(
    session: &mut Session,
    ctx: &mut RequestContext,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    retry_after: Option<String>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(retry_after) = retry_after {
        resp.insert_header(http::header::RETRY_AFTER, retry_after)?;
    }
    if !ctx.request_id.is_empty() {
        resp.insert_header(forward::X_REQUEST_ID, ctx.request_id.as_str())?;
    }
    ctx.own_status = Some(status);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

pub(super) fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Counts a retry on the request's group.
pub(super) fn count_retry(ctx: &RequestContext) {
    let group = ctx.group.as_ref().map_or("", |g| g.name.as_str());
    metrics::get()
        .upstream_retries
        .with_label_values(&[group])
        .inc();
}

/// `2xx` and the like, for metric labels.
pub(super) fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Counts an answer from the core, the media origin or a shield (under its shield group)
/// by group and host, with the time it took and an opened websocket.
pub(super) fn count_upstream_answer(ctx: &mut RequestContext, status: u16) {
    let group = match ctx.shield.current {
        Some(_) => ctx.shield.group.as_ref(),
        None => ctx.group.as_ref(),
    };
    let (Some(sent), Some(group)) = (ctx.upstream_sent, group) else {
        return;
    };
    let m = metrics::get();
    let labels = [group.name.as_str(), ctx.upstream_label.as_str()];
    m.upstream_response_seconds
        .with_label_values(&labels)
        .observe(sent.elapsed().as_secs_f64());
    m.upstream_responses
        .with_label_values(&[labels[0], labels[1], status_class(status)])
        .inc();
    if status == 101 && ctx.websocket && !ctx.websocket_open {
        ctx.websocket_open = true;
        m.open_websockets.with_label_values(&[labels[0]]).inc();
    }
}
