//! The proxy service: pingora's `ProxyHttp` hooks for one listener.
//!
//! Each hook stays short and hands the decision to a module: `limits` refuses malformed or
//! oversized requests, `upstream` picks a core host, `headers` sets who the client is and
//! drops hop-by-hop headers. `logging` writes the access-log line and the request metrics.
//! Later features (cache, media chain) slot in between these hooks.

pub mod headers;
pub mod limits;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use prometheus::IntCounter;

use crate::access_log::{AccessLogger, AccessRecord};
use crate::config::model::{Limits, TrustedProxies};
use crate::metrics;
use upstream::{CoreGroup, CoreUpstreams};

/// What every listener's proxy shares.
pub struct ProxyShared {
    pub core: Arc<CoreUpstreams>,
    /// Replaced whole by a reload.
    pub settings: Arc<ArcSwap<ProxySettings>>,
    pub access_log: AccessLogger,
}

/// The settings a reload may change while requests are flowing.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub trusted_proxies: TrustedProxies,
    pub limits: LimitsSnapshot,
}

impl ProxySettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        ProxySettings {
            trusted_proxies: config.trusted_proxies.clone(),
            limits: LimitsSnapshot::from(&config.limits),
        }
    }
}

/// The request limits, copied out of the config.
#[derive(Debug, Clone, Copy)]
pub struct LimitsSnapshot {
    pub max_uri_length: usize,
    pub max_header_size: usize,
    pub keepalive_secs: u64,
    pub max_connections: usize,
    pub client_body_timeout: std::time::Duration,
}

impl From<&Limits> for LimitsSnapshot {
    fn from(limits: &Limits) -> Self {
        LimitsSnapshot {
            max_uri_length: limits.max_uri_length,
            max_header_size: limits.max_header_size,
            keepalive_secs: limits.keepalive_timeout.as_secs().max(1),
            max_connections: limits.max_connections,
            client_body_timeout: limits.client_body_timeout,
        }
    }
}

/// The proxy of one listener.
pub struct EdgeProxy {
    listener: String,
    tls: bool,
    shared: Arc<ProxyShared>,
    counters: ListenerCounters,
}

/// This listener's per-request counters, looked up once rather than on every request.
struct ListenerCounters {
    /// Requests by status class: 1xx ... 5xx.
    requests_by_class: [IntCounter; 5],
    response_bytes: IntCounter,
}

impl ListenerCounters {
    fn new(listener: &str) -> Self {
        let m = metrics::get();
        ListenerCounters {
            requests_by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| m.requests.with_label_values(&[listener, class])),
            response_bytes: m.response_bytes.with_label_values(&[listener]),
        }
    }

    fn count(&self, status: u16, bytes: usize) {
        if status > 0 {
            let class = usize::from((status / 100).clamp(1, 5)) - 1;
            self.requests_by_class[class].inc();
        }
        self.response_bytes.inc_by(bytes as u64);
    }
}

impl EdgeProxy {
    pub fn new(listener: &str, tls: bool, shared: Arc<ProxyShared>) -> Self {
        EdgeProxy {
            listener: listener.to_string(),
            tls,
            shared,
            counters: ListenerCounters::new(listener),
        }
    }
}

/// Per-request state.
pub struct RequestContext {
    started: Instant,
    started_at: SystemTime,
    client_ip: Option<IpAddr>,
    group: Option<Arc<CoreGroup>>,
    /// Core hosts this request could not connect to, so a retry goes elsewhere.
    connect_failed: Vec<SocketAddr>,
    /// The host of the current attempt.
    current_host: Option<SocketAddr>,
    upstream_label: String,
    upstream_sent: Option<Instant>,
    upstream_status: Option<u16>,
    /// The status we answered with ourselves (refusals, errors), when pingora did not write
    /// an upstream response.
    own_status: Option<u16>,
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext {
            started: Instant::now(),
            started_at: SystemTime::now(),
            client_ip: None,
            group: None,
            connect_failed: Vec::new(),
            current_host: None,
            upstream_label: String::new(),
            upstream_sent: None,
            upstream_status: None,
            own_status: None,
        }
    }

    /// Refuses oversized or ambiguous requests before anything else looks at them, and applies
    /// the client-side timeouts.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        let settings = self.shared.settings.load();
        let limits = &settings.limits;
        // Only a connection the client wants kept alive gets our idle timeout; an HTTP/1.0
        // request without `Connection: keep-alive` stays a one-shot connection.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive_secs));
        }
        session.set_read_timeout(Some(limits.client_body_timeout));
        let raw = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let rejection = limits::check_request(
            session.req_header(),
            raw.as_deref(),
            limits.max_uri_length,
            limits.max_header_size,
        );
        let Some(rejection) = rejection else {
            return Ok(false);
        };
        metrics::get()
            .rejected_requests
            .with_label_values(&[self.listener.as_str(), rejection.reason()])
            .inc();
        // The body of a refused request is never read: the connection cannot be reused.
        session.set_keepalive(None);
        respond(session, ctx, rejection.status(), rejection.message()).await?;
        Ok(true)
    }

    /// Picks a core host from the default group, skipping hosts this request could not reach.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let group = match &ctx.group {
            Some(group) => group.clone(),
            None => {
                let group = self.shared.core.default().cloned().ok_or_else(|| {
                    Error::explain(ErrorType::InternalError, "no default upstream group")
                })?;
                ctx.group = Some(group.clone());
                group
            }
        };
        if ctx.client_ip.is_none() {
            ctx.client_ip = client_addr(session).map(|a| a.ip());
        }
        let Some((peer, label)) = group.pick(&ctx.connect_failed) else {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                format!("no healthy host left in upstream group {}", group.name),
            )
            .into_up());
        };
        ctx.current_host = peer._address.as_inet().copied();
        ctx.upstream_label = label;
        Ok(Box::new(peer))
    }

    /// A failed connect sent nothing, so any request may go to the next host.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let group = ctx.group.as_ref().map_or("", |g| g.name.as_str());
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => "connect_timeout",
            _ => "connect",
        };
        metrics::get()
            .upstream_errors
            .with_label_values(&[group, kind])
            .inc();
        if let Some(host) = ctx.current_host.take() {
            ctx.connect_failed.push(host);
        }
        let hosts = ctx.group.as_ref().map_or(0, |g| g.host_count());
        if ctx.connect_failed.len() < hosts {
            e.set_retry(true);
        }
        e
    }

    /// Sets the forwarding headers and drops hop-by-hop ones on the way to the core.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        let is_websocket = headers::is_websocket_upgrade(session.req_header());
        headers::strip_request_hop_by_hop(upstream_request, is_websocket);
        let peer = client_addr(session).map(|a| a.ip());
        ctx.client_ip = headers::set_forwarding(
            upstream_request,
            peer,
            self.tls,
            &self.shared.settings.load().trusted_proxies,
        );
        ctx.upstream_sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        if let (Some(sent), Some(group)) = (ctx.upstream_sent, &ctx.group) {
            metrics::get()
                .upstream_response_seconds
                .with_label_values(&[group.name.as_str()])
                .observe(sent.elapsed().as_secs_f64());
        }
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        // An HTTP/1.0 core answer still goes out as HTTP/1.1 to an HTTP/1.1 client; the
        // version is per hop (RFC 9110 §2.5).
        if session.req_header().version == http::Version::HTTP_11 {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        headers::strip_response_hop_by_hop(upstream_response);
        Ok(())
    }

    /// Answers with a short plain-text error: 502 when the core cannot be reached, 504 when it
    /// does not answer in time.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestContext,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 502,
            },
        };
        if e.esource() == &ErrorSource::Upstream {
            let group = ctx.group.as_ref().map_or("", |g| g.name.as_str());
            let kind = match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
                ErrorType::ConnectNoRoute => "no_healthy_host",
                _ => "other",
            };
            metrics::get()
                .upstream_errors
                .with_label_values(&[group, kind])
                .inc();
        }
        // The connection is not reused after an error; say so in the answer.
        session.set_keepalive(None);
        if code > 0 && session.response_written().is_none() {
            let message = match code {
                502 => "502 bad gateway: the core is unreachable\n",
                504 => "504 gateway timeout: the core did not answer in time\n",
                408 => "408 request timeout\n",
                400 => "400 bad request\n",
                _ => "error\n",
            };
            let _ = respond(session, ctx, code, message).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Counts the request and writes its access-log line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestContext) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.own_status)
            .unwrap_or(0);
        let bytes = session.body_bytes_sent();
        self.counters.count(status, bytes);
        if !self.shared.access_log.enabled() {
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
            listener: &self.listener,
            client_ip,
            method: req.method.as_str(),
            host,
            path: req.uri.path_and_query().map_or("", |p| p.as_str()),
            protocol: version_name(req.version),
            status,
            bytes,
            duration_ms: (ctx.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            upstream: &ctx.upstream_label,
            upstream_status: ctx.upstream_status,
            cache: "",
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
            error: e.map(|e| e.to_string()),
        };
        self.shared.access_log.log(&record);
    }
}

fn client_addr(session: &Session) -> Option<SocketAddr> {
    session.client_addr().and_then(|a| a.as_inet()).copied()
}

/// Writes a short plain-text response of our own.
async fn respond(
    session: &mut Session,
    ctx: &mut RequestContext,
    status: u16,
    body: &'static str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    ctx.own_status = Some(status);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
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

fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
