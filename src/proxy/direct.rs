//! Forwarding a body-less request to the core over connections of our own.
//!
//! pingora's upstream machinery (its connection pool with one watching task per idle
//! connection and a peer-address check per reuse, and two tasks joined by a channel per
//! exchange) costs a forwarded request more than everything else the PoP does for it. A
//! `GET` or `HEAD` without a body that no cache takes part in needs none of it: one request
//! head goes up, one response comes down. So `proxy_upstream_filter` hands such a request
//! here, after pingora has parsed it and every earlier hook has run, and it is forwarded with
//! the hooks pingora's path would call, in the same order (`upstream_peer`,
//! `fail_to_connect`, `upstream_request_filter`, `error_while_proxy`,
//! `upstream_response_filter`, `response_filter`, `upstream_response_body_filter`), over
//! pingora's own HTTP/1 client on a connection from the listener's
//! [`IdlePool`](crate::upstream::idle::IdlePool). What the client gets is what pingora's
//! path would have sent; a client that hangs up while the core works, before or during
//! the body, ends the exchange, as there.
//!
//! Anything this does not cover stays on pingora's path: requests with a body, cache fills
//! and revalidations, websockets, media, HTTP/2 clients, targets not in origin form, a
//! `Connection` field naming anything but `keep-alive` or `close` (pingora's path judges
//! those), and groups reached through the embedded mesh. A failure before the client was
//! sent anything that pingora would retry (another host after a failed connect, or a pooled
//! connection the host had closed) is handed back to pingora's path, which retries it as it
//! would its own. One difference is deliberate: a `101` to a request that asked for no
//! upgrade is a 502 here, where pingora's path would pass the switch on.

use std::time::Duration;

use http::header;
use pingora::connectors::TransportConnector;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::proxy::{ProxyHttp, Session};

use super::context::RequestContext;
use super::EdgeProxy;
use crate::metrics;
use crate::upstream::idle::IdlePool;

/// How long an idle connection is kept when its group names no idle timeout.
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// One listener's connections for forwarding directly.
pub(super) struct DirectForwarding {
    connector: TransportConnector,
    idle: IdlePool,
}

impl DirectForwarding {
    /// Keeps up to `max_idle` idle connections (`core.keepalive_pool_size`).
    pub(super) fn new(max_idle: usize) -> DirectForwarding {
        DirectForwarding {
            connector: TransportConnector::new(None),
            idle: IdlePool::new(max_idle),
        }
    }
}

/// How a request handed here ended.
pub(super) enum Direct {
    /// Answered (or failed after the answer began): pingora only finishes the request.
    Answered,
    /// Not forwarded here: pingora's path takes it, as if this had never run.
    NotTaken,
}

/// How the exchange of heads failed.
enum HeadsFailed {
    /// On the way to or from the core; `interim_sent`: an interim response already
    /// reached the client, so nothing may be retried.
    Core {
        error: Box<Error>,
        interim_sent: bool,
    },
    /// The client hung up or broke the connection.
    Client(Box<Error>),
    /// One of our hooks refused an interim response.
    Hook(Box<Error>),
}

/// What watching the client's side while the core works found. pingora's read of an idle
/// client fails when the client closed or reset the connection, and also when it sent
/// more (pipelining is off on these connections): both end the exchange, as on pingora's
/// path. It yields no bytes here; if it ever did, the watch would stop and the exchange
/// go on.
fn client_still_there(idle: Result<Option<bytes::Bytes>>) -> Result<()> {
    idle.map(|_| ())
}

/// pingora's path refuses a `Connection` field naming this many tokens or more.
const MAX_CONNECTION_TOKENS: usize = 10;

impl EdgeProxy {
    /// Whether `session`'s request is one this forwarding covers (see the module's doc).
    fn may_forward_directly(&self, session: &mut Session, ctx: &RequestContext) -> bool {
        // The cheap refusals first: this runs for every request that goes upstream.
        let req = session.req_header();
        let plain_read = !session.cache.enabled()
            && !session.cache.bypassing()
            && session.subrequest_ctx.is_none()
            && !ctx.websocket
            && !ctx.client_gone
            && ctx.slice_fill.is_none()
            && ctx.route.media().is_none()
            && req.version == http::Version::HTTP_11
            && (req.method == http::Method::GET || req.method == http::Method::HEAD)
            && !req.headers.contains_key(header::CONTENT_LENGTH)
            && !req.headers.contains_key(header::TRANSFER_ENCODING)
            && !req.headers.contains_key(header::EXPECT)
            && !req.headers.contains_key(header::UPGRADE)
            && !req.headers.contains_key("http2-settings")
            && req.raw_path().starts_with(b"/");
        if !plain_read {
            return false;
        }
        let mut hosts = req.headers.get_all(header::HOST).iter();
        let one_plain_host = hosts
            .next()
            .is_some_and(|host| !host.as_bytes().contains(&b'@'))
            && hosts.next().is_none();
        let mut tokens = 0;
        let connection_plain = req.headers.get_all(header::CONNECTION).iter().all(|value| {
            value.to_str().is_ok_and(|value| {
                value.split(',').map(str::trim).all(|token| {
                    tokens += 1;
                    token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close")
                })
            })
        }) && tokens < MAX_CONNECTION_TOKENS;
        one_plain_host && connection_plain && session.is_body_empty() && self.dialled_by_the_os(ctx)
    }

    /// Whether the request's group is reached through the OS, not the embedded mesh (whose
    /// connector only pingora's path uses). Known before a host is picked, so a request
    /// left to pingora's path never has a host picked for it twice.
    fn dialled_by_the_os(&self, ctx: &RequestContext) -> bool {
        let group = match &ctx.group {
            Some(group) => Some(group),
            None => self.shared.core.group(ctx.route.upstream()),
        };
        group.is_some_and(|group| group.mesh_connector().is_none())
    }

    /// Forwards the request when it is one this covers.
    pub(super) async fn forward_directly(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Direct> {
        if !self.may_forward_directly(session, ctx) {
            return Ok(Direct::NotTaken);
        }
        // No host to send it to is answered as pingora's path answers it (`fail_to_proxy`).
        let peer = self.upstream_peer(session, ctx).await?;
        let Some(&host) = peer._address.as_inet() else {
            return Error::e_explain(ErrorType::InternalError, "a core host without an address");
        };
        let connections = &self.direct;
        let idle_timeout = peer.options.idle_timeout.unwrap_or(DEFAULT_IDLE);
        let (stream, reused) = match connections.idle.take(host, idle_timeout) {
            Some(stream) => (stream, true),
            None => match connections.connector.new_stream(&*peer).await {
                Ok(stream) => (stream, false),
                Err(mut e) => {
                    e.as_up();
                    let e = self.fail_to_connect(session, &peer, ctx, e).into_up();
                    return if e.retry() {
                        Ok(Direct::NotTaken)
                    } else {
                        Err(e)
                    };
                }
            },
        };
        self.note_connected(ctx);

        let mut req = session.req_header().clone();
        self.upstream_request_filter(session, &mut req, ctx).await?;
        let mut upstream = UpstreamSession::new_with_options(stream, &*peer);
        upstream.read_timeout = peer.options.read_timeout;
        upstream.write_timeout = peer.options.write_timeout;
        let head = match self.exchange_heads(session, &mut upstream, req, ctx).await {
            Ok(head) => head,
            Err(HeadsFailed::Client(e)) => return Err(e.into_down()),
            Err(HeadsFailed::Hook(e)) => return Err(e),
            Err(HeadsFailed::Core {
                error,
                interim_sent,
            }) => {
                let mut e = self.error_while_proxy(&peer, session, error.into_up(), ctx, reused);
                if interim_sent {
                    e.set_retry(false);
                }
                return if e.retry() {
                    Ok(Direct::NotTaken)
                } else {
                    Err(e)
                };
            }
        };
        if let Some(group) = &ctx.group {
            metrics::get()
                .direct_forwards
                .with_label_values(&[group.name.as_str()])
                .inc();
        }
        self.pass_response(session, &mut upstream, head, ctx)
            .await?;
        if let Some(stream) = upstream.reuse().await {
            connections.idle.give_back(host, stream);
        }
        Ok(Direct::Answered)
    }

    /// Sends the request head and reads the final response head, passing interim ones on
    /// as pingora's path does, and watching the client meanwhile.
    async fn exchange_heads(
        &self,
        session: &mut Session,
        upstream: &mut UpstreamSession,
        req: RequestHeader,
        ctx: &mut RequestContext,
    ) -> std::result::Result<Box<ResponseHeader>, HeadsFailed> {
        let core = |error, interim_sent| HeadsFailed::Core {
            error,
            interim_sent,
        };
        upstream
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| core(e, false))?;
        upstream.finish_body().await.map_err(|e| core(e, false))?;
        let mut interim_sent = false;
        let mut watching = true;
        loop {
            let read = tokio::select! {
                read = upstream.read_response() => read,
                idle = session.downstream_session.read_body_or_idle(true), if watching => {
                    match client_still_there(idle) {
                        Err(e) => return Err(HeadsFailed::Client(e)),
                        Ok(()) => {
                            watching = false;
                            continue;
                        }
                    }
                }
            };
            read.map_err(|e| core(e, interim_sent))?;
            let mut head = match upstream.resp_header() {
                Some(head) => Box::new(head.clone()),
                None => {
                    let e = Error::explain(ErrorType::InvalidHTTPHeader, "no response head");
                    return Err(core(e, interim_sent));
                }
            };
            let status = head.status.as_u16();
            if status == 101 {
                let e = Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 from the core to a request that asked for no upgrade",
                );
                return Err(core(e, interim_sent));
            }
            if !(100..200).contains(&status) {
                upstream.respect_keepalive();
                return Ok(head);
            }
            self.upstream_response_filter(session, &mut head, ctx)
                .await
                .map_err(HeadsFailed::Hook)?;
            self.response_filter(session, &mut head, ctx)
                .await
                .map_err(HeadsFailed::Hook)?;
            session
                .write_response_header(head, false)
                .await
                .map_err(HeadsFailed::Client)?;
            interim_sent = true;
        }
    }

    /// Runs the response hooks on `head` and streams the body to the client.
    async fn pass_response(
        &self,
        session: &mut Session,
        upstream: &mut UpstreamSession,
        mut head: Box<ResponseHeader>,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        self.upstream_response_filter(session, &mut head, ctx)
            .await?;
        let no_body = session.req_header().method == http::Method::HEAD
            || matches!(head.status.as_u16(), 204 | 304);
        let ended = no_body || upstream.is_body_done();
        // A body that ends when the core closes goes out chunked, so the client's
        // connection outlives it.
        if !ended
            && !head.headers.contains_key(header::TRANSFER_ENCODING)
            && !head.headers.contains_key(header::CONTENT_LENGTH)
        {
            head.set_version(http::Version::HTTP_11);
            head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        self.response_filter(session, &mut head, ctx).await?;
        session
            .write_response_header(head, ended)
            .await
            .map_err(|e| e.into_down())?;
        ctx.upstream_body_received = Some(0);
        // A response without a body is whole with its head, as on pingora's path: no body
        // filter runs for it.
        let mut end = ended;
        let mut watching = true;
        while !end {
            let read = tokio::select! {
                read = upstream.read_body_bytes() => read,
                idle = session.downstream_session.read_body_or_idle(true), if watching => {
                    client_still_there(idle).map_err(|e| e.into_down())?;
                    watching = false;
                    continue;
                }
            };
            let mut piece = match read {
                Ok(piece) => piece,
                Err(mut e) => {
                    // The answer has begun: nothing can be retried.
                    e.set_retry(false);
                    return Err(e.into_up());
                }
            };
            let received = piece.as_ref().map_or(0, |p| p.len() as u64);
            ctx.upstream_body_received = ctx.upstream_body_received.map(|n| n + received);
            end = piece.is_none() || upstream.is_body_done();
            self.upstream_response_body_filter(session, &mut piece, end, ctx)?;
            session
                .write_response_body(piece, end)
                .await
                .map_err(|e| e.into_down())?;
        }
        session.finish_body().await.map_err(|e| e.into_down())?;
        Ok(())
    }
}
