//! How the proxy hands a media request's route to the loopback media origin.
//!
//! The proxy decides the route once, in `request_filter`. A media miss then travels to the
//! media origin as an HTTP request, and the route travels with it: the proxy lodges the
//! route here and sends the ticket's number in [`MEDIA_TICKET`]; the origin takes the route
//! back by that number. The origin therefore never routes a request again (not by its
//! `Host`, not under settings a reload has since replaced), and a request that carries no
//! ticket the proxy lodged (another local process calling the port) finds no route.
//!
//! A ticket is held in the request's context and withdrawn when the request ends, so the
//! table holds at most one entry per request in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::HeaderName;
use http::HeaderValue;
use parking_lot::Mutex;

use crate::config::model::Route;

/// The header that carries a ticket's number from the proxy to the media origin.
pub const MEDIA_TICKET: HeaderName = HeaderName::from_static("x-edgecache-media-ticket");

/// Routes lodged by requests in flight, by ticket number.
#[derive(Default)]
pub struct HandedRoutes {
    next: AtomicU64,
    by_ticket: Mutex<HashMap<u64, Arc<Route>>>,
}

impl HandedRoutes {
    /// The route lodged under the ticket a request carries, if it is one we lodged.
    pub fn route_for(&self, ticket: Option<&HeaderValue>) -> Option<Arc<Route>> {
        let number: u64 = ticket?.to_str().ok()?.parse().ok()?;
        self.by_ticket.lock().get(&number).cloned()
    }

    fn lodge(self: &Arc<Self>, route: Arc<Route>) -> Ticket {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.by_ticket.lock().insert(number, route);
        Ticket {
            number,
            routes: self.clone(),
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

/// A route lodged for one request; withdrawn when dropped.
pub struct Ticket {
    number: u64,
    routes: Arc<HandedRoutes>,
}

impl Ticket {
    /// The value of [`MEDIA_TICKET`] on the request to the media origin.
    pub fn header_value(&self) -> String {
        self.number.to_string()
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
}

impl MediaOrigin {
    pub fn new(address: SocketAddr, routes: Arc<HandedRoutes>) -> Self {
        MediaOrigin { address, routes }
    }

    /// The loopback address media misses are sent to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Lodges `route` for one request; the origin finds it while the ticket lives.
    pub fn hand_over(&self, route: Arc<Route>) -> Ticket {
        self.routes.lodge(route)
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
            media: None,
            upstream: None,
            max_body_size: None,
            client_limit: None,
        })
    }

    fn value(ticket: &Ticket) -> HeaderValue {
        HeaderValue::from_str(&ticket.header_value()).expect("a number is a header value")
    }

    #[test]
    fn a_ticket_finds_its_route_until_it_is_dropped() {
        let routes = Arc::new(HandedRoutes::default());
        let origin = MediaOrigin::new("127.0.0.1:1".parse().expect("address"), routes.clone());
        let system = origin.hand_over(route("/system/"));
        let emoji = origin.hand_over(route("/emoji/"));
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
        let _ticket = origin.hand_over(route("/system/"));
        assert!(routes.route_for(None).is_none());
        for forged in ["", "x", "-1", "99", "0 ", "18446744073709551616"] {
            let forged = HeaderValue::from_str(forged).expect("value");
            assert!(routes.route_for(Some(&forged)).is_none(), "{forged:?}");
        }
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
                        let ticket = origin.hand_over(route("/system/"));
                        assert!(routes.route_for(Some(&value(&ticket))).is_some());
                    }
                });
            }
        });
        assert!(routes.is_empty());
    }
}
