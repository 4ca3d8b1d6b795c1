//! How the proxy hands a media request's route to the loopback media origin.
//!
//! The proxy decides the route once, in `request_filter`. A media miss then travels to the
//! media origin as an HTTP request, and the route travels with it: the proxy lodges the
//! route here and sends the ticket's number in [`MEDIA_TICKET`]; the origin takes the route
//! back by that number. The origin therefore never routes a request again (not by its
//! `Host`, not under settings a reload has since replaced), and a request that carries no
//! ticket the proxy lodged (another local process calling the port) finds no route. A
//! ticket's value is its number and a tag keyed with this process's random secret, so a
//! process that sees the port cannot guess the ticket of a request in flight and take its
//! route or its copy.
//!
//! A ticket is held in the request's context and withdrawn when the request ends, so the
//! table holds at most one entry per request in flight.
//!
//! A ticket may also carry a write-through copy back the other way. When the proxy's cache
//! may keep the body on disk, the proxy offers a [`CopyHandoff`]: the origin holds the
//! body back until the proxy has seen the response's head and says whether the cache is
//! writing it to disk ([`CacheVerdict`]). If it is, the origin sends the body untouched and
//! leaves its reserved copy ([`PendingCopy`]) in the handoff; once the body is complete the
//! proxy links the cache's file to the copy's place in the queue. If not (or if the proxy
//! goes away without a word), the origin spools the copy itself as the body streams. Either
//! way the body is written to local disk once.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::HeaderName;
use http::HeaderValue;
use parking_lot::Mutex;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::config::model::Route;
use crate::migrate::arriving::LinkedCopy;

/// The header that carries a ticket's number from the proxy to the media origin.
pub const MEDIA_TICKET: HeaderName = HeaderName::from_static("x-edgecache-media-ticket");

/// What the proxy's cache does with a media response's body, told once its head is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheVerdict {
    /// The cache is writing the body to its disk tier: that file can be the copy.
    KeepsOnDisk,
    /// It is not: a copy is written as the body streams.
    DoesNotKeep,
}

/// The way a write-through copy of one media response can come from the cache's file.
pub struct CopyHandoff {
    /// Taken by the origin, which waits on it before sending the body.
    verdict: Mutex<Option<oneshot::Receiver<CacheVerdict>>>,
    /// Left by the origin when the cache keeps the body; taken by the proxy at the end.
    pending: Mutex<Option<PendingCopy>>,
}

impl CopyHandoff {
    /// The proxy's word on the cache, to wait for before sending the body; `None` once
    /// taken.
    pub fn take_verdict(&self) -> Option<oneshot::Receiver<CacheVerdict>> {
        self.verdict.lock().take()
    }

    /// Leaves the copy for the proxy to give the cache's file to.
    pub fn leave(&self, copy: PendingCopy) {
        *self.pending.lock() = Some(copy);
    }
}

/// A reserved write-through copy waiting for the cache's file of the body.
pub struct PendingCopy(LinkedCopy);

impl PendingCopy {
    pub fn new(copy: LinkedCopy) -> PendingCopy {
        PendingCopy(copy)
    }

    /// Where the cache's file is to be linked.
    pub fn destination(&self) -> Option<&Path> {
        self.0.destination()
    }

    /// The file at the destination holds the body from `offset` on: queue it.
    pub fn adopt(self, offset: u64) {
        self.0.adopt(offset);
    }
}

/// What a ticket lodges.
struct Lodged {
    tag: u64,
    route: Arc<Route>,
    copy: Option<Arc<CopyHandoff>>,
}

/// What the origin finds under a ticket.
pub struct Handed {
    pub route: Arc<Route>,
    /// Offered when the proxy's cache may keep the body on disk.
    pub copy: Option<Arc<CopyHandoff>>,
}

/// Routes lodged by requests in flight, by ticket number.
#[derive(Default)]
pub struct HandedRoutes {
    next: AtomicU64,
    by_ticket: Mutex<HashMap<u64, Lodged>>,
    /// Keys the tags (SipHash under random keys): a tag is unpredictable without them.
    secret: RandomState,
}

impl HandedRoutes {
    /// The route lodged under the ticket a request carries, if it is one we lodged.
    pub fn route_for(&self, ticket: Option<&HeaderValue>) -> Option<Arc<Route>> {
        self.handed(ticket).map(|handed| handed.route)
    }

    /// The route and the copy handoff lodged under the ticket a request carries.
    pub fn handed(&self, ticket: Option<&HeaderValue>) -> Option<Handed> {
        let (number, tag) = ticket?.to_str().ok()?.split_once('.')?;
        let number: u64 = number.parse().ok()?;
        let tag: u64 = tag.parse().ok()?;
        let by_ticket = self.by_ticket.lock();
        let lodged = by_ticket.get(&number)?;
        if !bool::from(lodged.tag.ct_eq(&tag)) {
            return None;
        }
        Some(Handed {
            route: lodged.route.clone(),
            copy: lodged.copy.clone(),
        })
    }

    fn tag(&self, number: u64) -> u64 {
        self.secret.hash_one(number)
    }

    fn lodge(self: &Arc<Self>, route: Arc<Route>, offer_copy: bool) -> Ticket {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let tag = self.tag(number);
        let (verdict, copy) = if offer_copy {
            let (sender, receiver) = oneshot::channel();
            let copy = Arc::new(CopyHandoff {
                verdict: Mutex::new(Some(receiver)),
                pending: Mutex::new(None),
            });
            (Some(sender), Some(copy))
        } else {
            (None, None)
        };
        self.by_ticket.lock().insert(
            number,
            Lodged {
                tag,
                route,
                copy: copy.clone(),
            },
        );
        Ticket {
            number,
            tag,
            routes: self.clone(),
            verdict,
            copy,
        }
    }

    /// How many routes are lodged now.
    pub fn len(&self) -> usize {
        self.by_ticket.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A route lodged for one request; withdrawn when dropped (an untold verdict then reads as
/// [`CacheVerdict::DoesNotKeep`] to the origin, and a copy left behind is given up).
pub struct Ticket {
    number: u64,
    tag: u64,
    routes: Arc<HandedRoutes>,
    verdict: Option<oneshot::Sender<CacheVerdict>>,
    copy: Option<Arc<CopyHandoff>>,
}

impl Ticket {
    /// The value of [`MEDIA_TICKET`] on the request to the media origin.
    pub fn header_value(&self) -> String {
        format!("{}.{}", self.number, self.tag)
    }

    /// Tells the origin what the cache does with the body; only the first word counts.
    pub fn tell(&mut self, verdict: CacheVerdict) {
        if let Some(sender) = self.verdict.take() {
            // The origin may not be waiting (no copy wanted): nothing to tell then.
            let _ = sender.send(verdict);
        }
    }

    /// The copy the origin left for the cache's file, if it did.
    pub fn take_pending_copy(&self) -> Option<PendingCopy> {
        self.copy.as_ref()?.pending.lock().take()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.routes.by_ticket.lock().remove(&self.number);
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Ticket").field(&self.number).finish()
    }
}

/// What the proxy holds of the media origin: where it listens, and where routes are lodged.
#[derive(Clone)]
pub struct MediaOrigin {
    address: SocketAddr,
    routes: Arc<HandedRoutes>,
    copies_from_cache: bool,
}

impl MediaOrigin {
    pub fn new(address: SocketAddr, routes: Arc<HandedRoutes>) -> Self {
        MediaOrigin {
            address,
            routes,
            copies_from_cache: false,
        }
    }

    /// The same origin, its write-through copies taken from the cache's files when
    /// `possible` (the cache's disk tier can link into the queue's directory).
    pub fn with_copies_from_cache(self, possible: bool) -> Self {
        MediaOrigin {
            copies_from_cache: possible,
            ..self
        }
    }

    /// Whether a write-through copy can be the cache's file of the body.
    pub fn takes_copies_from_cache(&self) -> bool {
        self.copies_from_cache
    }

    /// The loopback address media misses are sent to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Lodges `route` for one request; the origin finds it while the ticket lives. With
    /// `offer_copy`, a write-through copy may come from the cache's file ([`CopyHandoff`]):
    /// the caller must then [`Ticket::tell`] once the response's head is seen.
    pub fn hand_over(&self, route: Arc<Route>, offer_copy: bool) -> Ticket {
        self.routes.lodge(route, offer_copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> Arc<Route> {
        Arc::new(Route {
            id: 0,
            path: path.to_string(),
            cache: true,
            cache_ttl: None,
            heuristic_freshness: true,
            compress: true,
            slice: None,
            media: None,
            upstream: None,
            max_body_size: None,
            client_limit: None,
            shield: None,
        })
    }

    fn value(ticket: &Ticket) -> HeaderValue {
        HeaderValue::from_str(&ticket.header_value()).expect("a number is a header value")
    }

    #[test]
    fn a_ticket_finds_its_route_until_it_is_dropped() {
        let routes = Arc::new(HandedRoutes::default());
        let origin = MediaOrigin::new("127.0.0.1:1".parse().expect("address"), routes.clone());
        let system = origin.hand_over(route("/system/"), false);
        let emoji = origin.hand_over(route("/emoji/"), false);
        let found = routes.route_for(Some(&value(&system))).expect("lodged");
        assert_eq!(found.path, "/system/");
        let found = routes.route_for(Some(&value(&emoji))).expect("lodged");
        assert_eq!(found.path, "/emoji/");
        let gone = value(&system);
        drop(system);
        assert!(routes.route_for(Some(&gone)).is_none());
        assert_eq!(routes.len(), 1);
        drop(emoji);
        assert!(routes.is_empty());
    }

    #[test]
    fn a_request_without_a_lodged_ticket_finds_no_route() {
        let routes = Arc::new(HandedRoutes::default());
        let origin = MediaOrigin::new("127.0.0.1:1".parse().expect("address"), routes.clone());
        let _ticket = origin.hand_over(route("/system/"), false);
        assert!(routes.route_for(None).is_none());
        for forged in [
            "",
            "x",
            "-1",
            "99",
            "0",
            "0 ",
            "0.",
            "0.1",
            "18446744073709551616",
        ] {
            let forged = HeaderValue::from_str(forged).expect("value");
            assert!(routes.route_for(Some(&forged)).is_none(), "{forged:?}");
        }
    }

    #[test]
    fn a_ticket_number_with_another_tag_finds_nothing() {
        let routes = Arc::new(HandedRoutes::default());
        let origin = MediaOrigin::new("127.0.0.1:1".parse().expect("address"), routes.clone());
        let ticket = origin.hand_over(route("/system/"), true);
        let real = ticket.header_value();
        let (number, tag) = real.split_once('.').expect("number.tag");
        let tag: u64 = tag.parse().expect("tag");
        // Another process's secret (or none) gives other tags for the same number.
        let other = HandedRoutes::default();
        let guesses = [
            format!("{number}.{}", tag.wrapping_add(1)),
            format!("{number}.{}", other.tag(number.parse().expect("number"))),
            format!("{number}.0"),
            number.to_string(),
        ];
        for guess in guesses {
            let guess = HeaderValue::from_str(&guess).expect("value");
            assert!(routes.handed(Some(&guess)).is_none(), "{guess:?}");
        }
        let real = HeaderValue::from_str(&real).expect("value");
        assert!(routes.handed(Some(&real)).is_some());
    }

    #[test]
    fn tickets_lodged_and_dropped_from_many_threads_leave_nothing_behind() {
        let routes = Arc::new(HandedRoutes::default());
        let origin = MediaOrigin::new("127.0.0.1:1".parse().expect("address"), routes.clone());
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let origin = origin.clone();
                let routes = routes.clone();
                scope.spawn(move || {
                    for _ in 0..1000 {
                        let ticket = origin.hand_over(route("/system/"), false);
                        assert!(routes.route_for(Some(&value(&ticket))).is_some());
                    }
                });
            }
        });
        assert!(routes.is_empty());
    }

    #[tokio::test]
    async fn the_origin_hears_the_first_verdict_or_none_when_the_ticket_goes() {
        let routes = Arc::new(HandedRoutes::default());
        let origin = MediaOrigin::new("127.0.0.1:1".parse().expect("address"), routes.clone());
        let mut told = origin.hand_over(route("/system/"), true);
        let handed = routes.handed(Some(&value(&told))).expect("lodged");
        let copy = handed.copy.expect("a copy handoff was offered");
        let verdict = copy.take_verdict().expect("the verdict, once");
        assert!(copy.take_verdict().is_none());
        told.tell(CacheVerdict::KeepsOnDisk);
        told.tell(CacheVerdict::DoesNotKeep);
        assert_eq!(verdict.await, Ok(CacheVerdict::KeepsOnDisk));

        let silent = origin.hand_over(route("/system/"), true);
        let copy = routes
            .handed(Some(&value(&silent)))
            .and_then(|h| h.copy)
            .expect("offered");
        let verdict = copy.take_verdict().expect("verdict");
        drop(silent);
        assert!(verdict.await.is_err(), "a ticket gone says nothing");
        assert!(copy.pending.lock().is_none());

        let plain = origin.hand_over(route("/system/"), false);
        let handed = routes.handed(Some(&value(&plain))).expect("lodged");
        assert!(handed.copy.is_none());
        assert!(plain.take_pending_copy().is_none());
    }
}
