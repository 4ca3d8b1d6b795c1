//! What a failure means for a request: whether it may be tried on another host
//! (`fail_to_connect`, `error_while_proxy`), which status the client is told
//! (`fail_to_proxy`), and what is counted and which host is set aside.
//!
//! Retrying is where an edge can make a core's bad day worse: a POST sent twice is a
//! duplicate post, so only the group's retry methods are retried, and only before any
//! byte of the request body was read (see `forward::may_retry`).

use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use pingora::{ErrorSource, ErrorType, RetryType};

use super::context::RequestContext;
use super::forward;
use super::report::{count_retry, respond};
use crate::metrics;

/// A failed connect sent nothing, so any request may go to the next host.
pub(super) fn connect_failed(
    session: &Session,
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
        .with_label_values(&[group, ctx.upstream_label.as_str(), kind])
        .inc();
    if let Some(host) = ctx.current_host.take() {
        if let Some(group) = &ctx.group {
            group.eject(host);
            group.connect_failed(host);
        }
        ctx.failed_hosts.push(host);
    }
    let hosts = ctx.group.as_ref().map_or(0, |g| g.host_count());
    let retry = ctx.failed_hosts.len() < hosts && retry_allowed(session, ctx);
    e.set_retry(retry);
    if retry {
        count_retry(ctx);
    }
    e
}

/// A failure on a connection that was already carrying this request: retried only for
/// the group's retry methods, before any byte of the request body was read, and only when
/// the connection broke before any response came (pingora marks those `ReusedOnly`).
///
/// A reused connection may have been closed by the host while idle, so the request is
/// tried again, on the same host if no other is left. A new connection broken by the host
/// means the host is failing (a crashing core process resets what it had accepted): the
/// request goes to another host if one is left, as nginx's `proxy_next_upstream error`
/// does, and never to the same host again.
pub(super) fn failed_while_proxying(
    peer: &HttpPeer,
    session: &Session,
    e: Box<Error>,
    ctx: &mut RequestContext,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    if !retry_allowed(session, ctx) {
        e.set_retry(false);
        return e;
    }
    let before_any_response = matches!(e.retry, RetryType::ReusedOnly);
    e.retry.decide_reuse(client_reused);
    if before_any_response && set_aside_for_retry(ctx) {
        e.set_retry(true);
    }
    if e.retry() {
        count_retry(ctx);
    }
    e
}

/// Leaves the current host out of this request's next pick when another host is left to
/// try; whether one is.
fn set_aside_for_retry(ctx: &mut RequestContext) -> bool {
    let (Some(group), Some(host)) = (&ctx.group, ctx.current_host) else {
        return false;
    };
    let untried = group.host_count().saturating_sub(ctx.failed_hosts.len());
    if ctx.failed_hosts.contains(&host) || untried < 2 {
        return false;
    }
    ctx.failed_hosts.push(host);
    true
}

/// Answers with a short plain-text error: 502 when the core cannot be reached, 503 when no
/// host is healthy, 504 when it does not answer in time; nothing when the client is gone.
pub(super) async fn answer_failure(
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestContext,
) -> FailToProxy {
    let code = status_for(e);
    if e.esource() == &ErrorSource::Upstream {
        count_upstream_failure(e, ctx);
    }
    // The connection is not reused after an error; say so in the answer.
    session.set_keepalive(None);
    if code > 0 && session.response_written().is_none() {
        let message = match code {
            502 => "502 bad gateway: the core is unreachable\n",
            503 => "503 service unavailable: no core host is healthy\n",
            504 => "504 gateway timeout: the core did not answer in time\n",
            408 => "408 request timeout\n",
            413 => "413 request body too large\n",
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

/// A client that went away is not a failure of the PoP: the access log records it (status
/// 0 with the error), and no error line is written per stream, which a client closing
/// connections full of requests could otherwise turn into a flood.
pub(super) fn client_went_away(e: &Error) -> bool {
    e.esource() == &ErrorSource::Downstream && status_for(e) == 0
}

/// The status a failure is answered with; 0 when the client itself went away.
fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
                ErrorType::ConnectNoRoute => 503,
                _ => 502,
            },
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 502,
        },
    }
}

/// Counts a failure of the core by kind; a host that timed out is set aside.
fn count_upstream_failure(e: &Error, ctx: &RequestContext) {
    if matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    ) {
        if let (Some(group), Some(host)) = (&ctx.group, ctx.current_host) {
            group.eject(host);
        }
    }
    let group = ctx.group.as_ref().map_or("", |g| g.name.as_str());
    let kind = match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => "timeout",
        ErrorType::ConnectNoRoute if ctx.mesh_down => "mesh_not_connected",
        ErrorType::ConnectNoRoute => "no_healthy_host",
        _ => "other",
    };
    let host = if matches!(kind, "no_healthy_host" | "mesh_not_connected") {
        ""
    } else {
        ctx.upstream_label.as_str()
    };
    metrics::get()
        .upstream_errors
        .with_label_values(&[group, host, kind])
        .inc();
}

/// Whether this request may be repeated on another host after a failure.
fn retry_allowed(session: &Session, ctx: &RequestContext) -> bool {
    let method_retries = ctx
        .group
        .as_ref()
        .is_some_and(|g| g.retries(&session.req_header().method));
    forward::may_retry(method_retries, session.body_bytes_read())
}
