//! Per-client limits of a route (what nginx does with `limit_req` and `limit_conn`, and
//! Mastodon with rack-attack): requests per window and requests in flight, per client
//! address.
//!
//! Counts are exact, kept in two moka tables of at most `limits.client_table_size`
//! clients each; the least recently seen client is forgotten first, so memory is bounded
//! whatever the number of addresses. A client forgotten under pressure starts counting
//! again, which only ever errs towards letting a request through. Request windows are
//! aligned to the clock (`unix time / per`), as rack-attack's are, so `Retry-After` says
//! exactly when the window ends. An IPv6 client is counted by its /64: one host usually
//! holds a whole /64, and counting single addresses would let it walk past any limit.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;
use parking_lot::Mutex;

use crate::config::model::ClientLimit;

/// The limits of one route, with their counts.
pub struct RouteLimiter {
    /// The route's path, for the metric.
    pub route: String,
    limit: ClientLimit,
    /// Per client: the window it last counted in, and its count there.
    windows: Cache<IpAddr, Arc<Mutex<(u64, u32)>>>,
    /// Per client: its requests in flight.
    in_flight: Cache<IpAddr, Arc<AtomicU32>>,
}

impl std::fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimiter")
            .field("route", &self.route)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The answer for one request.
pub enum Verdict {
    /// Go ahead; keep the slot (if any) until the request is done.
    Allowed(Option<InFlight>),
    /// Refused: 429, try again after this long.
    Limited {
        retry_after: Duration,
        limit: &'static str,
    },
}

/// One request in flight, given back when dropped.
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a client whose concurrency limit is reached should wait.
const CONCURRENT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl RouteLimiter {
    pub fn new(route: &str, limit: ClientLimit, table_size: usize) -> Self {
        let capacity = u64::try_from(table_size).unwrap_or(u64::MAX);
        let mut windows = Cache::builder().max_capacity(capacity);
        if let Some((_, per)) = limit.requests {
            // A client not seen for a whole window has nothing left to count.
            windows = windows.time_to_idle(per);
        }
        RouteLimiter {
            route: route.to_string(),
            limit,
            windows: windows.build(),
            in_flight: Cache::builder().max_capacity(capacity).build(),
        }
    }

    /// Whether this request counts at all: its method, and whether it carries credentials.
    pub fn applies(&self, method: &http::Method, carries_credentials: bool) -> bool {
        (self.limit.methods.is_empty() || self.limit.methods.contains(method))
            && !(self.limit.anonymous_only && carries_credentials)
    }

    /// Counts a request of `client` now, and says whether it may go ahead.
    pub fn check(&self, client: IpAddr) -> Verdict {
        self.check_at(client, SystemTime::now())
    }

    fn check_at(&self, client: IpAddr, now: SystemTime) -> Verdict {
        let client = counted_as(client);
        if let Some((allowed, per)) = self.limit.requests {
            let per_secs = per.as_secs().max(1);
            let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let window = since_epoch.as_secs() / per_secs;
            let counted = {
                let entry = self
                    .windows
                    .get_with(client, || Arc::new(Mutex::new((window, 0))));
                let mut entry = entry.lock();
                if entry.0 != window {
                    *entry = (window, 0);
                }
                entry.1 = entry.1.saturating_add(1);
                entry.1
            };
            if counted > allowed {
                let ends = Duration::from_secs((window + 1).saturating_mul(per_secs));
                return Verdict::Limited {
                    retry_after: ends.saturating_sub(since_epoch),
                    limit: "requests",
                };
            }
        }
        let Some(allowed) = self.limit.concurrent else {
            return Verdict::Allowed(None);
        };
        let count = self
            .in_flight
            .get_with(client, || Arc::new(AtomicU32::new(0)));
        let taken = count.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(count);
        if taken >= allowed {
            return Verdict::Limited {
                retry_after: CONCURRENT_RETRY_AFTER,
                limit: "concurrent",
            };
        }
        Verdict::Allowed(Some(slot))
    }
}

/// The address a client is counted by: IPv4 (and IPv4-mapped IPv6) as is, IPv6 by /64.
fn counted_as(client: IpAddr) -> IpAddr {
    match crate::config::model::canonical_ip(client) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: Option<(u32, u64)>, concurrent: Option<u32>) -> RouteLimiter {
        RouteLimiter::new(
            "/auth/sign_in",
            ClientLimit {
                requests: requests.map(|(n, secs)| (n, Duration::from_secs(secs))),
                concurrent,
                methods: vec![http::Method::POST],
                anonymous_only: false,
            },
            1000,
        )
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    fn limited(verdict: &Verdict) -> Option<(Duration, &'static str)> {
        match verdict {
            Verdict::Allowed(_) => None,
            Verdict::Limited { retry_after, limit } => Some((*retry_after, *limit)),
        }
    }

    #[test]
    fn requests_are_counted_per_client_in_clock_aligned_windows() {
        let l = limiter(Some((3, 300)), None);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(limited(&l.check_at(a, at(3_000_010))).is_none());
        }
        // 3,000,010 s is 10 s into the window that starts at 3,000,000 and ends at 3,000,300.
        assert_eq!(
            limited(&l.check_at(a, at(3_000_010))),
            Some((Duration::from_secs(290), "requests"))
        );
        assert!(limited(&l.check_at(ip("192.0.2.2"), at(3_000_010))).is_none());
        assert!(
            limited(&l.check_at(a, at(3_000_300))).is_none(),
            "a new window"
        );
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let l = limiter(Some((1, 60)), None);
        assert!(limited(&l.check_at(ip("2001:db8:1:2::1"), at(60))).is_none());
        assert!(limited(&l.check_at(ip("2001:db8:1:2:ffff::9"), at(60))).is_some());
        assert!(limited(&l.check_at(ip("2001:db8:1:3::1"), at(60))).is_none());
        // An IPv4-mapped address is the IPv4 client.
        assert!(limited(&l.check_at(ip("192.0.2.7"), at(60))).is_none());
        assert!(limited(&l.check_at(ip("::ffff:192.0.2.7"), at(60))).is_some());
    }

    #[test]
    fn slots_in_flight_are_given_back_however_requests_end() {
        let l = limiter(None, Some(2));
        let a = ip("192.0.2.1");
        let first = l.check(a);
        let second = l.check(a);
        assert!(limited(&first).is_none() && limited(&second).is_none());
        assert_eq!(
            limited(&l.check(a)),
            Some((CONCURRENT_RETRY_AFTER, "concurrent"))
        );
        drop(first);
        let third = l.check(a);
        assert!(limited(&third).is_none(), "a slot came back");
        drop((second, third));
        assert_eq!(
            l.in_flight.get(&a).map(|c| c.load(Ordering::Acquire)),
            Some(0)
        );
    }

    #[test]
    fn concurrent_requests_from_many_threads_never_exceed_the_limit() {
        let l = Arc::new(limiter(None, Some(4)));
        let a = ip("192.0.2.1");
        let peak = Arc::new(AtomicU32::new(0));
        let holding = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, peak, holding) = (l.clone(), peak.clone(), holding.clone());
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        if let Verdict::Allowed(slot) = l.check(a) {
                            let now = holding.fetch_add(1, Ordering::AcqRel) + 1;
                            peak.fetch_max(now, Ordering::AcqRel);
                            std::thread::yield_now();
                            holding.fetch_sub(1, Ordering::AcqRel);
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert!(peak.load(Ordering::Acquire) <= 4, "{peak:?}");
        assert_eq!(
            l.in_flight.get(&a).map(|c| c.load(Ordering::Acquire)),
            Some(0)
        );
    }

    #[test]
    fn the_table_forgets_clients_beyond_its_size() {
        let l = RouteLimiter::new(
            "/",
            ClientLimit {
                requests: Some((1, Duration::from_secs(60))),
                concurrent: None,
                methods: Vec::new(),
                anonymous_only: false,
            },
            100,
        );
        for n in 0..10_000u32 {
            let client = IpAddr::V4(std::net::Ipv4Addr::from(n));
            let _ = l.check_at(client, at(120));
        }
        l.windows.run_pending_tasks();
        assert!(
            l.windows.entry_count() <= 100,
            "{}",
            l.windows.entry_count()
        );
    }

    #[test]
    fn only_the_named_methods_and_anonymous_requests_count() {
        let l = limiter(Some((1, 60)), None);
        assert!(l.applies(&http::Method::POST, false));
        assert!(!l.applies(&http::Method::GET, false));
        let anonymous = RouteLimiter::new(
            "/api/",
            ClientLimit {
                requests: Some((1, Duration::from_secs(60))),
                concurrent: None,
                methods: Vec::new(),
                anonymous_only: true,
            },
            10,
        );
        assert!(anonymous.applies(&http::Method::GET, false));
        assert!(!anonymous.applies(&http::Method::GET, true));
    }
}
