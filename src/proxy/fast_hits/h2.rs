//! Plain hits over HTTP/2, answered in the loop that accepts the streams
//! (`connections::h2`): the head and the body are queued on the stream at once, and go out
//! with whatever else the connection writes next.
//!
//! A request is plain by the same rules as over HTTP/1.1 (`plain_h2_get`), read from the
//! stream as the client sent it: when recording, from what `note_h2_request` kept before
//! any hook changed the request. Only memory-tier objects are answered here; disk copies
//! take pingora's path.

use std::time::{Instant, SystemTime};

use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::HttpSession;
use pingora::proxy::Session;

use super::{AnswerDone, Answered, FastHits, RecordedHead, Source, CACHE_STATUS};
use crate::proxy::limits::hpack_size;
use crate::proxy::plain_request::{plain_h2_get, PlainGet};

/// The largest body answered here. The body is queued on the stream whole and the loop
/// moves on: nothing then marks the connection busy, so a body that a slow reader had
/// not taken by the connection's idle timeout would be cut off, and its answer is
/// counted as sent when queued. A body this small fits any stream's first flow-control
/// window (64 KiB unless the client asks for less) and goes out with the next write;
/// larger ones take pingora's path, which writes them under its own timeouts (`record`
/// keeps no HTTP/2 head for them).
pub(super) const MAX_QUEUED_BODY: usize = 16 * 1024;

/// The spelling of a plain HTTP/2 request, kept from its arrival until it is recorded.
pub struct Spelling {
    pub(super) host: Box<[u8]>,
    pub(super) target: Box<[u8]>,
    pub(super) accept_encoding: Option<Box<[u8]>>,
}

impl FastHits {
    /// The spelling of `session`'s request when it is a plain HTTP/2 one, taken before any
    /// hook changes the request, for `record` to key its head under.
    pub(in crate::proxy) fn note_h2_request(&self, session: &Session) -> Option<Box<Spelling>> {
        let h2 = session.as_http2()?;
        if !h2.is_body_empty() {
            return None;
        }
        let tls = h2.digest().is_some_and(|d| d.ssl_digest.is_some());
        let plain = plain_h2_get(h2.req_header(), tls)?;
        Some(Box::new(Spelling {
            host: plain.host.into(),
            target: plain.target.into(),
            accept_encoding: plain.accept_encoding.map(Into::into),
        }))
    }

    /// Answers a new stream from a recorded HTTP/2 head, when it can (see the parent
    /// module's doc): the answer is queued on the stream, and written when the connection
    /// is next driven. `tls`: the connection's.
    pub fn answer_h2(&self, session: &mut HttpSession, tls: bool) -> Answered {
        let started = Instant::now();
        let started_at = SystemTime::now();
        if !session.is_body_empty() {
            return Answered::No;
        }
        let request = session.req_header();
        let Some(plain) = plain_h2_get(request, tls) else {
            return Answered::No;
        };
        let header_size = hpack_size(&request.headers);
        let Some((recorded, settings)) = self.usable(true, &plain, header_size, started_at) else {
            return Answered::No;
        };
        let RecordedHead::Http2(recorded_head) = &recorded.head else {
            return Answered::No;
        };
        let (Some(policy), Some(storage)) = (
            settings.cache_policy.as_ref(),
            self.shared.cache.as_ref().map(|c| c.storage),
        ) else {
            return Answered::No;
        };
        let Source::Memory(object) = &recorded.source else {
            return Answered::No;
        };
        let Some(object) = storage.memory_hit_if_current(&recorded.combined, object) else {
            return Answered::No;
        };
        let request_id = self.shared.request_ids.next_id();
        let (age, entry) = recorded.age_and_entry(&policy.status_name, started_at);
        let mut head: Box<ResponseHeader> = recorded_head.clone();
        let fields = head
            .insert_header(http::header::AGE, age)
            .and_then(|()| head.insert_header(super::super::forward::X_REQUEST_ID, &request_id))
            .and_then(|()| {
                head.append_header(CACHE_STATUS, entry.to_string())
                    .map(|_| ())
            });
        if fields.is_err() {
            return Answered::No;
        }
        // What the access log needs of the request, kept before the stream is written to.
        let logged = self
            .shared
            .access_log
            .enabled()
            .then(|| LoggedRequest::from(&plain));
        let body = object.body.clone();
        let body_length = body.len();
        // pingora adds `Date`, as on its own path.
        let written = session
            .write_response_header(head, body.is_empty())
            .map_err(|e| e.to_string())
            .and_then(|()| match session.take_response_body_writer() {
                _ if body.is_empty() => Ok(()),
                // Queued whole: the object is in memory already, and the stream's flow
                // control paces it out.
                Some(mut writer) => writer.send_data(body, true).map_err(|e| e.to_string()),
                None => Err("no body writer after the head".to_string()),
            });
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let logged = logged.unwrap_or_default();
        self.account(&AnswerDone {
            plain: &logged.as_plain(),
            protocol: "HTTP/2",
            client,
            request_id: &request_id,
            started,
            started_at,
            body_length,
            error: written.err(),
        })
    }
}

/// The fields of a plain request the access log records, owned.
#[derive(Default)]
struct LoggedRequest {
    host: Vec<u8>,
    target: Vec<u8>,
    user_agent: Vec<u8>,
    referer: Vec<u8>,
}

impl LoggedRequest {
    fn from(plain: &PlainGet<'_>) -> LoggedRequest {
        LoggedRequest {
            host: plain.host.to_vec(),
            target: plain.target.to_vec(),
            user_agent: plain.user_agent.to_vec(),
            referer: plain.referer.to_vec(),
        }
    }

    fn as_plain(&self) -> PlainGet<'_> {
        PlainGet {
            host: &self.host,
            target: &self.target,
            accept_encoding: None,
            user_agent: &self.user_agent,
            referer: &self.referer,
        }
    }
}
