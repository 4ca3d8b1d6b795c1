//! The admin listener: health, readiness, metrics and reload, on its own address.
//!
//! It binds to loopback (or the mesh) by default and is never exposed with the public
//! listeners. `/healthz` says the process is up; `/readyz` says this PoP can serve: every
//! listener is bound and the core's default group has a host that passed its last
//! health check. `/reload`, `/purge` and `/upgrade` need the bearer token from
//! `admin.token_file` when one is set.

pub mod client;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::cache::EdgeCache;
use crate::fleet::{
    Purge, PurgeFailure, PurgeKind, PurgeSource, PurgeTarget, Purger, FLEET_ORIGIN_HEADER,
    PURGE_ID_HEADER,
};
use crate::metrics;
use crate::reload::Reloader;
use crate::sockets;
use crate::upgrade::{UpgradeError, Upgrader};
use crate::upstream::CoreUpstreams;

pub struct AdminApp {
    pub listeners: Vec<(String, SocketAddr)>,
    pub core: Arc<CoreUpstreams>,
    pub reloader: Arc<Reloader>,
    /// The bearer token `/reload` requires; a reload may change it.
    pub token: Arc<ArcSwapOption<String>>,
    pub cache: Option<Arc<EdgeCache>>,
    /// Applies purges here and passes them to the fleet.
    pub purger: Arc<Purger>,
    /// Starts this process's successor for a graceful upgrade.
    pub upgrader: Arc<Upgrader>,
}

/// What a purge's query asks for: exactly one of `url`, `prefix` or `tag`; `deleted` with
/// a URL only; `host` with a tag only. A problem is said in one line.
fn purge_query(query: &str) -> Result<(PurgeTarget, bool), String> {
    let mut asked: Vec<(PurgeKind, String)> = Vec::new();
    let mut host = None;
    let mut deleted = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "url" => asked.push((PurgeKind::Url, value.into_owned())),
            "prefix" => asked.push((PurgeKind::Prefix, value.into_owned())),
            "tag" => asked.push((PurgeKind::Tag, value.into_owned())),
            "host" => host = Some(value.to_ascii_lowercase()),
            "deleted" => deleted = matches!(value.as_ref(), "1" | "true" | "yes"),
            _ => {}
        }
    }
    let [(kind, value)] = <[_; 1]>::try_from(asked)
        .map_err(|_| "give exactly one of ?url=, ?prefix= or ?tag=".to_string())?;
    if deleted && kind != PurgeKind::Url {
        return Err("deleted applies to one URL (?url=), not a prefix or a tag".to_string());
    }
    if kind == PurgeKind::Tag {
        crate::cache::tags::check_tag(&value).map_err(|e| format!("{value:?}: {e}"))?;
    }
    if host.is_some() && kind != PurgeKind::Tag {
        return Err("host applies to a tag (?tag=); a URL names its own host".to_string());
    }
    if let Some(host) = &host {
        let valid = !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
        if !valid {
            return Err(format!("{host:?} is not a host name"));
        }
    }
    Ok((PurgeTarget { kind, value, host }, deleted))
}

/// An id for a purge a peer sent without one: unique, so each such purge is logged.
fn unnamed_purge_id(origin: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:020}-unnamed-{origin}")
}

/// A 200 with a JSON body.
fn json(body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Vec<u8>> {
    let body = body.into().into_bytes();
    let length = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(length),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

impl AdminApp {
    async fn readiness(&self) -> Response<Vec<u8>> {
        let mut problems = Vec::new();
        match sockets::own_listening_addresses() {
            Ok(bound) => {
                for (name, address) in &self.listeners {
                    if !bound.contains(address) {
                        problems.push(format!("listener {name} ({address}) is not bound"));
                    }
                }
            }
            Err(e) => problems.push(format!("cannot list listening sockets: {e}")),
        }
        if let Some(problem) = self.core.mesh.problem() {
            problems.push(problem);
        }
        if !self.core.ready() {
            let hosts = self
                .core
                .default()
                .map(|group| {
                    group
                        .host_states()
                        .iter()
                        .map(|(host, state)| format!("{host} {state}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            problems.push(format!(
                "no host of core group {} passed its last health check ({hosts})",
                self.core.default_group
            ));
        }
        if problems.is_empty() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready\n{}\n", problems.join("\n")),
            )
        }
    }

    fn metrics_text(&self) -> Result<String, prometheus::Error> {
        if let Some(cache) = &self.cache {
            cache.storage.report();
        }
        metrics::gather_text()
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let token = self.token.load();
        let Some(token) = token.as_deref() else {
            return true;
        };
        session
            .get_header(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| {
                crate::config::model::same_secret(given.trim().as_bytes(), token.as_bytes())
            })
    }

    /// `POST /purge?url=<url>` removes one URL (every variant), `?prefix=<url prefix>`
    /// everything under it, `?tag=<tag>` every object with that cache tag (`&host=<host>`:
    /// on that host only), from both tiers. Always needs the admin token.
    async fn purge(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if self.token.load().is_none() {
            return text(
                StatusCode::FORBIDDEN,
                "purging needs admin.token_file to be configured\n",
            );
        }
        if !self.authorized(session) {
            return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        }
        let query = session.req_header().uri.query().unwrap_or("");
        let (target, deleted) = match purge_query(query) {
            Ok(asked) => asked,
            Err(problem) => return text(StatusCode::BAD_REQUEST, format!("{problem}\n")),
        };
        // A purge a peer passes on is applied here and goes no further.
        let header = |name: &str| {
            session
                .req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let outcome = match header(FLEET_ORIGIN_HEADER) {
            Some(origin) => {
                let purge = Purge {
                    // Peers always name their purges.
                    id: header(PURGE_ID_HEADER).unwrap_or_else(|| unnamed_purge_id(&origin)),
                    kind: target.kind,
                    value: target.value,
                    origin,
                    deleted,
                    host: target.host,
                };
                self.purger.purge_from_peer(&purge, PurgeSource::Peer).await
            }
            None => {
                self.purger
                    .purge(&target, deleted, PurgeSource::Admin)
                    .await
            }
        };
        match outcome {
            Ok(report) => json((report.to_json() + "\n").into_bytes()),
            Err(PurgeFailure::Bad(e)) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            Err(PurgeFailure::Fleet(e)) => {
                tracing::error!(error = %e, "purge not queued for the fleet");
                text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
            }
        }
    }

    async fn reload(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if !self.authorized(session) {
            return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        }
        let reloader = self.reloader.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(report)) => {
                let mut body = format!(
                    "reloaded\ncertificates replaced: {}\n",
                    report.certificates_replaced.join(", ")
                );
                for item in &report.needs_restart {
                    body.push_str(&format!("needs restart: {item}\n"));
                }
                text(StatusCode::OK, body)
            }
            Ok(Err(e)) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused, the running configuration stays in service:\n{e}\n"),
            ),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reload failed: {e}\n"),
            ),
        }
    }

    /// `GET /fleet/purges?after=N&limit=M&kinds=url,prefix,tag`: this PoP's purge log after
    /// entry N, for peers catching up; tag purges only for a peer whose `kinds` names them.
    /// Needs the admin token.
    async fn purge_log(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if self.token.load().is_none() || !self.authorized(session) {
            return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        }
        let Some(fleet) = self.purger.fleet.clone() else {
            return text(StatusCode::NOT_FOUND, "this PoP has no fleet\n");
        };
        let query = session.req_header().uri.query().unwrap_or("");
        let mut after = 0u64;
        let mut limit = 1000usize;
        // A reader names the kinds it can apply; one that names none predates tag purges.
        let mut with_tags = false;
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let parsed = match name.as_ref() {
                "after" => value.parse().map(|v| after = v).is_ok(),
                "kinds" => {
                    with_tags = value.split(',').any(|kind| kind.trim() == "tag");
                    true
                }
                "limit" => value
                    .parse()
                    .map(|v: usize| limit = v.clamp(1, 10_000))
                    .is_ok(),
                _ => true,
            };
            if !parsed {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid {name}: {value}\n"),
                );
            }
        }
        let log = fleet.log.clone();
        match tokio::task::spawn_blocking(move || log.read_after(after, limit, with_tags)).await {
            Ok(Ok(page)) => match serde_json::to_vec(&page) {
                Ok(body) => json(body),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }

    async fn upgrade(&self, session: &ServerSession) -> Response<Vec<u8>> {
        // Replacing the process drops the memory tier and every websocket: never without a
        // token.
        if self.token.load().is_none() {
            return text(
                StatusCode::FORBIDDEN,
                "upgrading needs admin.token_file to be configured\n",
            );
        }
        if !self.authorized(session) {
            return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
        }
        let upgrader = self.upgrader.clone();
        match tokio::task::spawn_blocking(move || upgrader.start()).await {
            Ok(Ok(started)) => text(StatusCode::OK, format!("{started}\n")),
            Ok(Err(e @ (UpgradeError::InProgress(_) | UpgradeError::HandingOver))) => {
                text(StatusCode::CONFLICT, format!("upgrade refused: {e}\n"))
            }
            Ok(Err(e)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("upgrade failed: {e}\n"),
            ),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("upgrade failed: {e}\n"),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (path.as_str(), &method) {
            ("/healthz", &Method::GET | &Method::HEAD) => text(StatusCode::OK, "ok\n"),
            ("/readyz", &Method::GET | &Method::HEAD) => self.readiness().await,
            ("/metrics", &Method::GET | &Method::HEAD) => match self.metrics_text() {
                Ok(body) => {
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    resp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")),
            },
            ("/reload", &Method::POST) => self.reload(session).await,
            ("/purge", &Method::POST) => self.purge(session).await,
            ("/upgrade", &Method::POST) => self.upgrade(session).await,
            ("/fleet/purges", &Method::GET) => self.purge_log(session).await,
            ("/healthz" | "/readyz" | "/metrics" | "/fleet/purges", _)
            | ("/reload" | "/purge" | "/upgrade", _) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
