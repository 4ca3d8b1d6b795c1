//! Forwarding a body-less request to the core over connections of our own.
//!
//! pingora's upstream machinery (its connection pool with one watching task per idle
//! connection and a peer-address check per reuse, and two tasks joined by a channel per
//! exchange) costs a forwarded request more than everything else the PoP does for it. A
//! `GET` or `HEAD` without a body that no cache takes part in needs none of it: one request
//! head goes up, one response comes down. So `proxy_upstream_filter` hands such a request
//! here, after pingora has parsed it and every earlier hook has run, and it is forwarded with
//! the same hooks pingora's path would call, in the same order (`upstream_peer`,
//! `fail_to_connect`, `upstream_request_filter`, `error_while_proxy`,
//! `upstream_response_filter`, `response_filter`, `upstream_response_body_filter`), over
//! pingora's own HTTP/1 client on a connection from [`DirectPool`]. What the client gets is
//! what pingora's path would have sent.
//!
//! Anything this does not cover stays on pingora's path: requests with a body, ranges kept
//! by the cache, websockets, media, HTTP/2 clients, requests whose target is not in origin
//! form, and embedded-mesh hosts. A failure before the client was sent anything that pingora
//! would retry (another host after a failed connect, or a pooled connection the host had
//! closed) is handed back to pingora's path, which retries it as it would its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header;
use parking_lot::Mutex;
use pingora::connectors::TransportConnector;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::Stream;
use pingora::proxy::{ProxyHttp, Session};
use tokio::io::AsyncReadExt;

use super::context::RequestContext;
use super::EdgeProxy;
use crate::metrics;

/// How long an idle connection is kept when its group names no idle timeout.
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// Idle connections to core hosts, at most `max_idle` of them in all.
pub struct DirectPool {
    connector: TransportConnector,
    max_idle: usize,
    idle: Mutex<IdleConnections>,
}

#[derive(Default)]
struct IdleConnections {
    count: usize,
    by_host: HashMap<SocketAddr, Vec<(Stream, Instant)>>,
}

impl DirectPool {
    pub fn new(max_idle: usize) -> DirectPool {
        DirectPool {
            connector: TransportConnector::new(None),
            max_idle,
            idle: Mutex::new(IdleConnections::default()),
        }
    }

    /// The most recently idle connection to `host` that is still open and was idle less
    /// than `idle_timeout`; older and closed ones are dropped on the way.
    fn take(&self, host: SocketAddr, idle_timeout: Duration) -> Option<Stream> {
        let mut idle = self.idle.lock();
        let IdleConnections { count, by_host } = &mut *idle;
        let waiting = by_host.get_mut(&host)?;
        while let Some((mut stream, since)) = waiting.pop() {
            *count -= 1;
            if since.elapsed() < idle_timeout && still_quiet(&mut stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next request to `host`, unless the pool is full.
    fn give_back(&self, host: SocketAddr, stream: Stream) {
        let mut idle = self.idle.lock();
        if idle.count >= self.max_idle {
            return;
        }
        idle.count += 1;
        idle.by_host
            .entry(host)
            .or_default()
            .push((stream, Instant::now()));
    }

    /// Idle connections kept now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().count
    }
}

/// Whether an idle connection has nothing to read: a host that closed it, or sent
/// something unasked, has made it useless.
fn still_quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: the runtime's cooperative budget must not make a ready read look
    // pending.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

/// How a request handed here ended.
pub(super) enum Direct {
    /// Answered (or failed after the answer began): pingora only finishes the request.
    Answered,
    /// Not forwarded here: pingora's path takes it, as if this had never run.
    NotTaken,
}

impl EdgeProxy {
    /// Whether `session`'s request is one this forwarding covers (see the module's doc).
    fn may_forward_directly(&self, session: &mut Session, ctx: &RequestContext) -> bool {
        let body_empty = session.is_body_empty();
        let req = session.req_header();
        let mut hosts = req.headers.get_all(header::HOST).iter();
        let one_plain_host = hosts
            .next()
            .is_some_and(|host| !host.as_bytes().contains(&b'@'))
            && hosts.next().is_none();
        !session.cache.enabled()
            && !session.cache.bypassing()
            && session.subrequest_ctx.is_none()
            && !ctx.websocket
            && !ctx.client_gone
            && ctx.slice_fill.is_none()
            && ctx.route.media().is_none()
            && req.version == http::Version::HTTP_11
            && (req.method == http::Method::GET || req.method == http::Method::HEAD)
            && body_empty
            && !req.headers.contains_key(header::CONTENT_LENGTH)
            && !req.headers.contains_key(header::TRANSFER_ENCODING)
            && !req.headers.contains_key(header::EXPECT)
            && !req.headers.contains_key(header::UPGRADE)
            && !req.headers.contains_key("http2-settings")
            && req.raw_path().starts_with(b"/")
            && one_plain_host
            && self.dialled_by_the_os(ctx)
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
        let pool = &self.shared.direct_pool;
        let idle_timeout = peer.options.idle_timeout.unwrap_or(DEFAULT_IDLE);
        let (stream, reused) = match pool.take(host, idle_timeout) {
            Some(stream) => (stream, true),
            None => match pool.connector.new_stream(&*peer).await {
                Ok(stream) => (stream, false),
                Err(e) => {
                    let e = self.fail_to_connect(session, &peer, ctx, e);
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
            Err(e) => {
                let e = self.error_while_proxy(&peer, session, e.into_up(), ctx, reused);
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
            pool.give_back(host, stream);
        }
        Ok(Direct::Answered)
    }

    /// Sends the request head and reads the final response head, passing interim ones on
    /// as pingora's path does. Nothing has reached the client when this fails.
    async fn exchange_heads(
        &self,
        session: &mut Session,
        upstream: &mut UpstreamSession,
        req: RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<Box<ResponseHeader>> {
        upstream.write_request_header(Box::new(req)).await?;
        upstream.finish_body().await?;
        loop {
            upstream.read_response().await?;
            let head = upstream
                .resp_header()
                .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response head"))?
                .clone();
            let status = head.status.as_u16();
            if status == 101 {
                // Nothing here asked to switch protocols.
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "101 from the core to a request that asked for no upgrade",
                );
            }
            if !(100..200).contains(&status) {
                upstream.respect_keepalive();
                return Ok(Box::new(head));
            }
            let mut interim = head;
            self.upstream_response_filter(session, &mut interim, ctx)
                .await?;
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
        // A body that ends when the core closes goes out chunked, so the client's
        // connection outlives it.
        if !no_body
            && !head.headers.contains_key(header::TRANSFER_ENCODING)
            && !head.headers.contains_key(header::CONTENT_LENGTH)
            && !upstream.is_body_done()
        {
            head.set_version(http::Version::HTTP_11);
            head.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        self.response_filter(session, &mut head, ctx).await?;
        session
            .write_response_header(head, false)
            .await
            .map_err(|e| e.into_down())?;
        ctx.upstream_body_received = Some(0);
        loop {
            let mut piece = match upstream.read_body_bytes().await {
                Ok(piece) => piece,
                Err(mut e) => {
                    // The answer has begun: nothing can be retried.
                    e.set_retry(false);
                    return Err(e.into_up());
                }
            };
            let received = piece.as_ref().map_or(0, |p| p.len() as u64);
            ctx.upstream_body_received = ctx.upstream_body_received.map(|n| n + received);
            let end = piece.is_none() || upstream.is_body_done();
            self.upstream_response_body_filter(session, &mut piece, end, ctx)?;
            session
                .write_response_body(piece, end)
                .await
                .map_err(|e| e.into_down())?;
            if end {
                break;
            }
        }
        session.finish_body().await.map_err(|e| e.into_down())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: our end as pingora's stream, and the host's end.
    async fn connection(listener: &TcpListener) -> (Stream, TcpStream) {
        let address = listener.local_addr().expect("address");
        let ours = TcpStream::connect(address).await.expect("connect");
        let (theirs, _) = listener.accept().await.expect("accept");
        (Box::new(L4Stream::from(ours)), theirs)
    }

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind")
    }

    #[tokio::test]
    async fn a_connection_given_back_is_taken_for_its_host_only() {
        let (a, b) = (listener().await, listener().await);
        let pool = DirectPool::new(8);
        let (stream, _host_end) = connection(&a).await;
        let host_a = a.local_addr().expect("address");
        let host_b = b.local_addr().expect("address");
        pool.give_back(host_a, stream);
        assert_eq!(pool.idle_count(), 1);
        assert!(pool.take(host_b, DEFAULT_IDLE).is_none());
        assert!(pool.take(host_a, DEFAULT_IDLE).is_some());
        assert!(pool.take(host_a, DEFAULT_IDLE).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn the_pool_keeps_no_more_than_its_limit() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = DirectPool::new(2);
        let mut host_ends = Vec::new();
        for _ in 0..3 {
            let (stream, theirs) = connection(&a).await;
            host_ends.push(theirs);
            pool.give_back(host, stream);
        }
        assert_eq!(pool.idle_count(), 2);
        assert!(pool.take(host, DEFAULT_IDLE).is_some());
        assert!(pool.take(host, DEFAULT_IDLE).is_some());
        assert!(pool.take(host, DEFAULT_IDLE).is_none());
    }

    #[tokio::test]
    async fn connections_the_host_closed_or_wrote_on_are_never_handed_out() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = DirectPool::new(8);
        let (closed, theirs) = connection(&a).await;
        drop(theirs);
        let (chatty, mut theirs_chatty) = connection(&a).await;
        theirs_chatty
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("write");
        pool.give_back(host, closed);
        pool.give_back(host, chatty);
        // Let the close and the bytes arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(host, DEFAULT_IDLE).is_none());
        assert_eq!(pool.idle_count(), 0, "both are dropped on the way");
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_dropped() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = DirectPool::new(8);
        let (stream, _theirs) = connection(&a).await;
        pool.give_back(host, stream);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(pool.take(host, Duration::from_millis(10)).is_none());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn takers_on_many_tasks_never_share_a_connection() {
        let a = listener().await;
        let host = a.local_addr().expect("address");
        let pool = std::sync::Arc::new(DirectPool::new(64));
        let mut host_ends = Vec::new();
        for _ in 0..32 {
            let (stream, theirs) = connection(&a).await;
            host_ends.push(theirs);
            pool.give_back(host, stream);
        }
        let mut takers = Vec::new();
        for _ in 0..8 {
            let pool = pool.clone();
            takers.push(tokio::spawn(async move {
                let mut taken = Vec::new();
                while let Some(stream) = pool.take(host, DEFAULT_IDLE) {
                    taken.push(stream);
                    tokio::task::yield_now().await;
                }
                taken.len()
            }));
        }
        let mut total = 0;
        for taker in takers {
            total += taker.await.expect("taker");
        }
        assert_eq!(total, 32);
        assert_eq!(pool.idle_count(), 0);
    }
}
