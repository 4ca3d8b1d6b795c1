//! Hits answered from the HTTP/1 connection loop, without building a request for pingora.
//!
//! A fresh object in the memory tier gets, for a plain request, the same answer every time
//! but for four fields: `Date`, `Age`, `X-Request-Id` and this PoP's `Cache-Status` entry.
//! So when pingora's path answers such a request with a hit, `record` keeps the head it
//! wrote without those four fields, under the exact bytes of the request's host, target and
//! `Accept-Encoding`. The connection loop hands each request head to `answer`, which serves
//! it from that head when the same bytes ask again and everything the answer depended on
//! still holds: the same settings (no reload since), the same object still current in the
//! memory tier with no newer copy arriving, and still fresh. Anything else, or any doubt,
//! goes through pingora as before.
//!
//! An object kept on disk only is answered the same way on plain TCP connections, its body
//! sent from the entry file (`send_file`), when pingora's path has lately read that copy
//! whole and found every block good (`DISK_CHECKED_WITHIN`).
//!
//! "Plain" is decided on the raw head, the same way when recording and answering: a
//! `GET` over HTTP/1.1 whose fields are all on a short list that no decision of the PoP
//! reads (besides `Host` and `Accept-Encoding`, which are part of the lookup), so the
//! answer cannot depend on anything else the client sent. Ranges, validators, cookies,
//! credentials, bodies and cache directives all take pingora's path.
//!
//! HTTP/2 streams are answered the same way from the memory tier (`h2`), in the loop that
//! accepts them, under heads recorded from HTTP/2 answers: the two protocols' heads differ,
//! so each is kept apart.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash as _, Hasher};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use pingora::cache::key::CacheHashKey;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;

mod h2;

pub use h2::Spelling;

use super::context::RequestContext;
use super::plain_request::{plain_get, PlainGet, PLAIN_FIELDS};
use super::report::{self, ListenerCounters};
use super::send_file;
use super::settings::ProxySettings;
use super::ProxyShared;
use crate::access_log::AccessRecord;
use crate::cache::disk::DiskObject;
use crate::cache::memory::MemObject;
use crate::cache::meta::StoredMeta;
use crate::cache::status_field::Entry;
use crate::cache::{CacheStatus, Hash};
use crate::metrics;

/// Bytes of recorded heads (with their request spellings) kept per listener, at most. One
/// object can be asked for under many spellings (query padding, host case), each recorded
/// on its own: the bound is on bytes, not entries.
const MAX_RECORDED_BYTES: u64 = 8 << 20;

/// The longest host, target and `Accept-Encoding` together that a recorded head is kept
/// under; longer requests always take pingora's path.
const MAX_SPELLING: usize = 1024;

/// Where a recorded hit's body is.
enum Source {
    /// This object in the memory tier.
    Memory(Weak<MemObject>),
    /// This copy in the disk tier, sent from its file; plain connections only. A 304
    /// rewrites a copy's meta file in place, so its times tell a refreshed copy apart.
    Disk {
        generation: u64,
        created: SystemTime,
        updated: SystemTime,
    },
}

/// A disk copy is sent without its blocks passing through the process, so without their
/// checksums checked on the way: it is sent that way only when this process read it whole
/// and found it good this long ago at most. Otherwise pingora's path serves it, checking
/// every block, and that renews the check.
const DISK_CHECKED_WITHIN: std::time::Duration = std::time::Duration::from_secs(300);

/// What a recorded hit was, and the head to answer with.
struct Recorded {
    host: Box<[u8]>,
    target: Box<[u8]>,
    accept_encoding: Option<Box<[u8]>>,
    /// The settings it was answered under; a reload makes it useless.
    settings: Weak<ProxySettings>,
    combined: Hash,
    source: Source,
    /// What `Age` counts from, and until when the object is fresh (pingora's measures).
    epoch: SystemTime,
    fresh_until: SystemTime,
    head: RecordedHead,
}

/// A recorded answer's head without the four fields made per answer.
enum RecordedHead {
    /// The status line and every field, each line ended, as HTTP/1.1 sends them.
    Http1(Bytes),
    /// The fields as HTTP/2 sends them.
    Http2(Box<pingora::http::ResponseHeader>),
}

impl RecordedHead {
    fn len(&self) -> usize {
        match self {
            RecordedHead::Http1(head) => head.len(),
            // Each field and 32 bytes beside it (about what the map spends on an entry),
            // and the head itself.
            RecordedHead::Http2(head) => {
                super::limits::hpack_size(&head.headers)
                    + std::mem::size_of::<pingora::http::ResponseHeader>()
            }
        }
    }
}

impl Recorded {
    fn weight(&self) -> u32 {
        let bytes = self.host.len()
            + self.target.len()
            + self.accept_encoding.as_ref().map_or(0, |a| a.len())
            + self.head.len()
            + std::mem::size_of::<Recorded>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The body a recorded head is answered with.
enum Served {
    Memory(Arc<MemObject>),
    Disk(Box<(DiskObject, send_file::FileSender)>),
}

/// How `answer` ended.
pub enum Answered {
    /// Answered: the connection may carry the next request.
    Done,
    /// Not a request this can answer: pingora's path takes it.
    No,
    /// The answer could not be written: the connection is done.
    Failed,
}

/// One listener's recorded hits.
pub struct FastHits {
    listener: String,
    shared: Arc<ProxyShared>,
    recorded: moka::sync::Cache<u64, Arc<Recorded>>,
    keys: std::collections::hash_map::RandomState,
    counters: ListenerCounters,
    answered: IntCounter,
}

impl FastHits {
    pub fn new(listener: &str, shared: Arc<ProxyShared>) -> Self {
        FastHits {
            listener: listener.to_string(),
            shared,
            recorded: moka::sync::Cache::builder()
                .max_capacity(MAX_RECORDED_BYTES)
                .weigher(|_, recorded: &Arc<Recorded>| recorded.weight())
                .build(),
            keys: std::collections::hash_map::RandomState::new(),
            counters: ListenerCounters::new(listener),
            answered: metrics::get().fast_hits.with_label_values(&[listener]),
        }
    }

    fn key(&self, http2: bool, host: &[u8], target: &[u8], accept_encoding: Option<&[u8]>) -> u64 {
        let mut hasher = self.keys.build_hasher();
        http2.hash(&mut hasher);
        host.hash(&mut hasher);
        target.hash(&mut hasher);
        accept_encoding.hash(&mut hasher);
        hasher.finish()
    }

    /// Keeps the head pingora wrote for this request when it was a plain hit from the
    /// memory tier, answered whole.
    pub(super) fn record(&self, session: &Session, ctx: &RequestContext) {
        if !answered_whole_from_cache(session, ctx) {
            return;
        }
        let Some(settings) = ctx.settings.clone() else {
            return;
        };
        // A `Cache-Status` that shows the key would need it per answer.
        let Some(policy) = settings.cache_policy.as_ref().filter(|p| !p.status_key) else {
            return;
        };
        // A cache-buster request must reach `admission`, whatever it looks like.
        if settings
            .cache_buster
            .as_ref()
            .is_some_and(|b| PLAIN_FIELDS.contains(&b.secret_header.as_str()))
        {
            return;
        }
        // The request as the client sent it: HTTP/1's raw head, or what `note_h2_request`
        // kept of an HTTP/2 one before any hook changed it.
        let raw;
        let (http2, host, target, accept_encoding) = match session.as_http1() {
            Some(h1) => {
                raw = h1.get_headers_raw_bytes();
                let Some(plain) = plain_get(&raw) else {
                    return;
                };
                (false, plain.host, plain.target, plain.accept_encoding)
            }
            None => {
                let Some(spelling) = ctx.h2_spelling.as_deref() else {
                    return;
                };
                let accept_encoding = spelling.accept_encoding.as_deref();
                (true, &*spelling.host, &*spelling.target, accept_encoding)
            }
        };
        let spelling = host.len() + target.len() + accept_encoding.map_or(0, <[u8]>::len);
        if spelling > MAX_SPELLING {
            return;
        }
        let (Some(storage), Some(written)) = (
            self.shared.cache.as_ref().map(|c| c.storage),
            session.response_written(),
        ) else {
            return;
        };
        let (Some(meta), Some(cache_key)) = (
            session.cache.maybe_cache_meta(),
            session.cache.maybe_cache_key(),
        ) else {
            return;
        };
        if meta.variance().is_some() || written.headers.contains_key(http::header::VARY) {
            return;
        }
        let combined = cache_key.combined_bin();
        // The copy served is the one a lookup finds now: the same times of storing and of
        // last validation, not another copy stored under the key since. The tiers keep
        // pingora's epoch as the time of last validation (`StoredMeta::from_cache_meta`),
        // which differs from its `updated` once a 304 refreshed the copy.
        let same_copy = |stored: &StoredMeta| {
            stored.fresh_until == meta.fresh_until()
                && stored.created == meta.created()
                && stored.updated == meta.epoch()
        };
        let (source, body_length) = if let Some(object) = storage.memory_object(&combined) {
            if !same_copy(&object.meta) {
                return;
            }
            (Source::Memory(Arc::downgrade(&object)), object.body.len())
        } else {
            // From disk only where the loop can send the file itself.
            if http2 || session.digest().is_none_or(|d| d.ssl_digest.is_some()) {
                return;
            }
            let Some(copy) = storage.disk_copy(&combined) else {
                return;
            };
            let Ok(length) = usize::try_from(copy.body_len) else {
                return;
            };
            if !same_copy(&copy.meta) {
                return;
            }
            (
                Source::Disk {
                    generation: copy.generation,
                    created: copy.meta.created,
                    updated: copy.meta.updated,
                },
                length,
            )
        };
        if session.body_bytes_sent() != body_length || (http2 && body_length > h2::MAX_QUEUED_BODY)
        {
            return;
        }
        // The loop writes the body as it is: only a head framing it by its length will do
        // (an object stored without one goes out chunked).
        if written
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
            || written
                .headers
                .get_all(http::header::CONTENT_LENGTH)
                .iter()
                .count()
                != 1
            || crate::wire::content_length(&written.headers) != Some(body_length as u64)
        {
            return;
        }
        let Some(kept) = without_per_answer_fields(written, &policy.status_name) else {
            return;
        };
        let head = if http2 {
            RecordedHead::Http2(Box::new(kept))
        } else {
            match http1_head(kept) {
                Some(head) => RecordedHead::Http1(head),
                None => return,
            }
        };
        let recorded = Recorded {
            host: host.into(),
            target: target.into(),
            accept_encoding: accept_encoding.map(Into::into),
            settings: Arc::downgrade(&settings),
            combined,
            source,
            epoch: meta.epoch(),
            fresh_until: meta.fresh_until(),
            head,
        };
        let key = self.key(http2, host, target, accept_encoding);
        self.recorded.insert(key, Arc::new(recorded));
    }

    /// The head recorded for `plain` (over HTTP/2 or not) with the settings in force, when
    /// it may still answer it: recorded under the same spelling and these settings, still
    /// fresh at `now`, for a request within the limits (`header_size`: its fields as the
    /// limits count them) on a PoP whose `Cache-Status` shows no key.
    fn usable(
        &self,
        http2: bool,
        plain: &PlainGet<'_>,
        header_size: usize,
        now: SystemTime,
    ) -> Option<(Arc<Recorded>, arc_swap::Guard<Arc<ProxySettings>>)> {
        let key = self.key(http2, plain.host, plain.target, plain.accept_encoding);
        let recorded = self.recorded.get(&key)?;
        let settings = self.shared.settings.load();
        let usable = *recorded.host == *plain.host
            && *recorded.target == *plain.target
            && recorded.accept_encoding.as_deref() == plain.accept_encoding
            && std::ptr::eq(recorded.settings.as_ptr(), Arc::as_ptr(&settings))
            && header_size <= settings.limits.max_header_size
            && plain.target.len() <= settings.limits.max_uri_length
            && now <= recorded.fresh_until
            && settings
                .cache_policy
                .as_ref()
                .is_some_and(|p| !p.status_key);
        usable.then_some((recorded, settings))
    }

    /// Answers the request in `head` from a recorded head, when it can (see the module
    /// doc); `head` is the whole of what was read, so nothing of a next request is lost.
    pub async fn answer(&self, stream: &mut Stream, head: &[u8]) -> Answered {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let Some(plain) = plain_get(head) else {
            return Answered::No;
        };
        let Some((recorded, settings)) = self.usable(false, &plain, head.len(), started_at) else {
            return Answered::No;
        };
        let RecordedHead::Http1(recorded_head) = &recorded.head else {
            return Answered::No;
        };
        let (Some(policy), Some(storage)) = (
            settings.cache_policy.as_ref(),
            self.shared.cache.as_ref().map(|c| c.storage),
        ) else {
            return Answered::No;
        };
        let served = match &recorded.source {
            Source::Memory(object) => storage
                .memory_hit_if_current(&recorded.combined, object)
                .map(Served::Memory),
            Source::Disk {
                generation,
                created,
                updated,
            } => {
                // Made first: when it cannot be, nothing is counted and pingora answers.
                let sender = send_file::FileSender::for_stream(stream);
                sender.and_then(|sender| {
                    let same_times = |copy: &DiskObject| {
                        copy.meta.created == *created
                            && copy.meta.updated == *updated
                            && copy.meta.fresh_until == recorded.fresh_until
                    };
                    storage
                        .disk_hit_if_current(
                            &recorded.combined,
                            *generation,
                            DISK_CHECKED_WITHIN,
                            same_times,
                        )
                        .map(|copy| Served::Disk(Box::new((copy, sender))))
                })
            }
        };
        let Some(served) = served else {
            return Answered::No;
        };
        let request_id = self.shared.request_ids.next_id();
        let head_out = render(&recorded, recorded_head, policy, &request_id, started_at);
        let idle = settings.limits.client_body_timeout;
        let (written, body_length) = match &served {
            Served::Memory(object) => (
                write_answer(stream, &head_out, &object.body, idle).await,
                object.body.len(),
            ),
            Served::Disk(disk) => {
                let (copy, sender) = disk.as_ref();
                let (file, offset) = copy.body_file();
                let length = usize::try_from(copy.body_len).unwrap_or(usize::MAX);
                let sent = sender
                    .send(stream, &head_out, file, offset, copy.body_len, idle)
                    .await;
                if sent == Err(send_file::SendError::FileEndedEarly) {
                    storage.drop_damaged_disk_copy(copy, "the body file ended while it was sent");
                }
                (sent.map_err(|e| e.to_string()), length)
            }
        };
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        self.account(&AnswerDone {
            plain: &plain,
            protocol: "HTTP/1.1",
            client,
            request_id: &request_id,
            started,
            started_at,
            body_length,
            error: written.err(),
        })
    }

    /// Counts and logs an answer as any hit is; whether it was written whole.
    fn account(&self, done: &AnswerDone<'_>) -> Answered {
        let bytes = if done.error.is_none() {
            done.body_length
        } else {
            0
        };
        CacheStatus::Hit.count();
        self.counters.count(200, bytes);
        self.answered.inc();
        if self.shared.access_log.enabled() {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            let plain = done.plain;
            let (host, path) = (text(plain.host), text(plain.target));
            let (user_agent, referer) = (text(plain.user_agent), text(plain.referer));
            self.shared.access_log.log(&AccessRecord {
                time: report::rfc3339(done.started_at),
                listener: &self.listener,
                client_ip: done.client.map(|ip| ip.to_string()).unwrap_or_default(),
                method: "GET",
                host: &host,
                path: &path,
                protocol: done.protocol,
                status: 200,
                bytes,
                duration_ms: report::rounded_ms(done.started),
                upstream: "",
                upstream_status: None,
                cache: CacheStatus::Hit.as_str(),
                user_agent: &user_agent,
                referer: &referer,
                error: done.error.clone(),
                request_id: done.request_id,
            });
        }
        if bytes == 0 && done.body_length != 0 {
            return Answered::Failed;
        }
        Answered::Done
    }
}

/// What `account` counts and logs of one answer.
struct AnswerDone<'a> {
    plain: &'a PlainGet<'a>,
    protocol: &'static str,
    client: Option<std::net::IpAddr>,
    request_id: &'a str,
    started: Instant,
    started_at: SystemTime,
    body_length: usize,
    /// Why the answer was not written whole.
    error: Option<String>,
}

/// Writes the head and the body with as few writes as the socket takes (one, when it has
/// room), each within `idle` (a client reading slowly but steadily is not cut off), and
/// flushes.
async fn write_answer(
    stream: &mut Stream,
    mut head: &[u8],
    mut body: &[u8],
    idle: std::time::Duration,
) -> Result<(), String> {
    while !head.is_empty() || !body.is_empty() {
        let pieces = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let written = match tokio::time::timeout(idle, stream.write_vectored(&pieces)).await {
            Ok(Ok(0)) => return Err("writing the answer: the connection closed".to_string()),
            Ok(Ok(written)) => written,
            Ok(Err(e)) => return Err(format!("writing the answer: {e}")),
            Err(_) => return Err("writing the answer timed out".to_string()),
        };
        let from_head = written.min(head.len());
        head = &head[from_head..];
        body = body.get(written - from_head..).unwrap_or_default();
    }
    match tokio::time::timeout(idle, stream.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("writing the answer: {e}")),
        Err(_) => Err("writing the answer timed out".to_string()),
    }
}

/// Whether pingora's path answered this request whole with a stored response that it
/// neither changed for the request nor waited for.
fn answered_whole_from_cache(session: &Session, ctx: &RequestContext) -> bool {
    ctx.cache_status == Some(CacheStatus::Hit)
        && ctx.upstream_sent.is_none()
        && ctx.slice_fill.is_none()
        && !ctx.served_from_slices
        && ctx.stored_span.is_none()
        && ctx.completion.is_none()
        && ctx.body_work.is_none()
        && ctx.route.client_limit.is_none()
        && session.subrequest_ctx.is_none()
        && session.cache.lock_duration().is_none()
        && session.response_written().is_some_and(|r| r.status == 200)
        && matches!(
            session.req_header().version,
            http::Version::HTTP_11 | http::Version::HTTP_2
        )
}

/// The head pingora wrote without `Date`, `Age`, `X-Request-Id` and this PoP's
/// `Cache-Status` entry (the last one; entries of caches before it stay).
fn without_per_answer_fields(
    written: &pingora::http::ResponseHeader,
    name: &str,
) -> Option<pingora::http::ResponseHeader> {
    let mut kept = written.clone();
    let mut entries: Vec<_> = kept.headers.get_all(CACHE_STATUS).iter().cloned().collect();
    // Ours is the last entry, and a hit's; the entries of caches before us stay.
    let ours = entries.pop()?;
    let hit = hit_entry(name, None).to_string();
    if !ours.as_bytes().starts_with(hit.as_bytes()) {
        return None;
    }
    let _ = kept.remove_header(&CACHE_STATUS);
    for value in entries {
        kept.append_header(CACHE_STATUS, value).ok()?;
    }
    for name in [http::header::DATE, http::header::AGE] {
        let _ = kept.remove_header(&name);
    }
    let _ = kept.remove_header(&super::forward::X_REQUEST_ID);
    Some(kept)
}

/// A head without the per-answer fields as HTTP/1.1 bytes, when it fits the loop.
fn http1_head(kept: pingora::http::ResponseHeader) -> Option<Bytes> {
    // The answer's own `Connection` comes from the loop's keep-alive, which a plain
    // request always asks for.
    if kept
        .headers
        .get(http::header::CONNECTION)
        .is_none_or(|v| !v.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
    {
        return None;
    }
    // The status line as pingora writes it (the answer is HTTP/1.1 whatever the stored
    // copy said), then the fields.
    let mut head = BytesMut::with_capacity(512);
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(kept.status.as_str().as_bytes());
    head.put_u8(b' ');
    if let Some(reason) = kept.get_reason_phrase() {
        head.put_slice(reason.as_bytes());
    }
    head.put_slice(b"\r\n");
    kept.header_to_h1_wire(&mut head);
    Some(head.freeze())
}

impl Recorded {
    /// This answer's `Age` and this PoP's `Cache-Status` entry, at `now`.
    fn age_and_entry<'p>(&self, status_name: &'p str, now: SystemTime) -> (u64, Entry<'p>) {
        let age = now.duration_since(self.epoch).unwrap_or_default().as_secs();
        let ttl = self
            .fresh_until
            .duration_since(now)
            .map_or(0, |left| i64::try_from(left.as_secs()).unwrap_or(i64::MAX));
        (age, hit_entry(status_name, Some(ttl)))
    }
}

/// The recorded HTTP/1.1 `head` with this answer's four fields and the blank line.
fn render(
    recorded: &Recorded,
    head: &[u8],
    policy: &crate::config::model::CachePolicy,
    request_id: &str,
    now: SystemTime,
) -> BytesMut {
    let (age, entry) = recorded.age_and_entry(&policy.status_name, now);
    let date = pingora::protocols::http::date::get_cached_date();
    let mut out = BytesMut::with_capacity(head.len() + 160);
    out.put_slice(head);
    out.put_slice(b"Date: ");
    out.put_slice(date.as_bytes());
    // Writing into a `BytesMut` cannot fail.
    let _ = write!(
        out,
        "\r\nAge: {age}\r\nx-request-id: {request_id}\r\ncache-status: {entry}\r\n\r\n"
    );
    out
}

/// This PoP's `Cache-Status` entry for a hit, as `cache_use` writes it.
fn hit_entry(name: &str, ttl: Option<i64>) -> Entry<'_> {
    Entry {
        name,
        forward: None,
        forward_status: None,
        ttl,
        stored: false,
        collapsed: false,
        key: None,
    }
}

const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");
