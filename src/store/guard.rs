//! Protection for a place that may be dying (an old server's failing disks): at most
//! `max_concurrency` requests in flight, bodies included, and a circuit breaker that stops
//! sending after `failures` failures in a row, then lets one probe through: first after
//! `first_probe_after`, then after twice the last wait each time a probe fails, never more
//! than `cooldown`. One successful probe closes the circuit, so a place that is back is
//! used again within a second or two rather than a whole cooldown later.
//!
//! A request that is refused is not queued: the chain moves on at once, so the edge never
//! piles requests onto a place that is already slow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::model::BreakerSettings;
use crate::metrics;

#[derive(Debug)]
enum Circuit {
    Closed {
        failures: u32,
    },
    /// `waited`: how long this opening lasts, the base of the next one if the probe fails.
    Open {
        until: Instant,
        waited: Duration,
    },
    /// One probe is out; everything else is refused until it reports.
    Probing {
        waited: Duration,
    },
}

pub struct Guard {
    store: String,
    permits: Arc<Semaphore>,
    breaker: BreakerSettings,
    circuit: Mutex<Circuit>,
}

/// Leave to send one request; held until its body is done. The outcome is reported
/// through it; a probe dropped without a report lets the next request probe instead.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    guard: Arc<Guard>,
    probe: bool,
    reported: bool,
}

impl Admission {
    pub fn succeeded(&mut self) {
        self.reported = true;
        self.guard.succeeded();
    }

    pub fn failed(&mut self) {
        self.reported = true;
        self.guard.failed();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.guard.probe_abandoned();
        }
    }
}

impl Guard {
    pub fn new(store: &str, max_concurrency: usize, breaker: BreakerSettings) -> Guard {
        Guard {
            store: store.to_string(),
            permits: Arc::new(Semaphore::new(max_concurrency)),
            breaker,
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
        }
    }

    /// Leave to send a request now, or `None` when the store is at its limit or its
    /// circuit is open.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let probe = {
            let mut circuit = self.circuit.lock();
            match *circuit {
                Circuit::Closed { .. } => false,
                Circuit::Probing { .. } => return None,
                Circuit::Open { until, waited } => {
                    if Instant::now() < until {
                        return None;
                    }
                    *circuit = Circuit::Probing { waited };
                    tracing::info!(store = %self.store, "probing a store after its circuit opened");
                    true
                }
            }
        };
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(Admission {
                _permit: permit,
                guard: self.clone(),
                probe,
                reported: false,
            }),
            Err(_) => {
                // A probe that never went out must not keep the circuit shut for good.
                if probe {
                    self.probe_abandoned();
                }
                None
            }
        }
    }

    /// A probe went nowhere (no permit, or dropped without an answer): the next request
    /// may probe at once, and the wait it was due stays the base of the next one.
    fn probe_abandoned(&self) {
        let mut circuit = self.circuit.lock();
        if let Circuit::Probing { waited } = *circuit {
            *circuit = Circuit::Open {
                until: Instant::now(),
                waited,
            };
        }
    }

    /// The store answered (an object or a clean "no such object").
    fn succeeded(&self) {
        let mut circuit = self.circuit.lock();
        if !matches!(*circuit, Circuit::Closed { failures: 0 }) {
            if !matches!(*circuit, Circuit::Closed { .. }) {
                tracing::info!(store = %self.store, "store answered again; circuit closed");
                self.set_open_gauge(false);
            }
            *circuit = Circuit::Closed { failures: 0 };
        }
    }

    /// The store failed (error, timeout, a body cut short).
    fn failed(&self) {
        if self.breaker.failures == 0 {
            return;
        }
        let mut circuit = self.circuit.lock();
        let wait = match *circuit {
            Circuit::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures < self.breaker.failures {
                    *circuit = Circuit::Closed { failures };
                    return;
                }
                self.breaker.first_probe_after.min(self.breaker.cooldown)
            }
            Circuit::Probing { waited } => waited.saturating_mul(2).min(self.breaker.cooldown),
            // Answers of requests admitted before it opened change nothing.
            Circuit::Open { .. } => return,
        };
        *circuit = Circuit::Open {
            until: Instant::now() + wait,
            waited: wait,
        };
        self.set_open_gauge(true);
        tracing::warn!(
            store = %self.store,
            next_probe_in = ?wait,
            "store keeps failing; requests to it are held back"
        );
    }

    fn set_open_gauge(&self, open: bool) {
        metrics::get()
            .media_store_circuit_open
            .with_label_values(&[self.store.as_str()])
            .set(i64::from(open));
    }

    #[cfg(test)]
    fn first_probe_after(&self) -> Duration {
        self.breaker.first_probe_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard(limit: usize, failures: u32, cooldown_ms: u64) -> Arc<Guard> {
        backing_off(limit, failures, cooldown_ms, cooldown_ms)
    }

    fn backing_off(limit: usize, failures: u32, first_ms: u64, cooldown_ms: u64) -> Arc<Guard> {
        Arc::new(Guard::new(
            "old",
            limit,
            BreakerSettings {
                failures,
                cooldown: Duration::from_millis(cooldown_ms),
                first_probe_after: Duration::from_millis(first_ms),
            },
        ))
    }

    #[test]
    fn the_limit_holds_while_admissions_live() {
        let g = guard(2, 0, 1);
        let a = g.admit().expect("first");
        let _b = g.admit().expect("second");
        assert!(g.admit().is_none());
        drop(a);
        assert!(g.admit().is_some());
    }

    #[test]
    fn repeated_failures_open_the_circuit_and_a_probe_closes_it() {
        let g = guard(8, 3, 50);
        for _ in 0..2 {
            g.admit().expect("closed").failed();
        }
        g.admit().expect("still closed after 2 failures").failed();
        assert!(g.admit().is_none(), "open after 3 failures");
        std::thread::sleep(g.first_probe_after() + Duration::from_millis(10));
        let mut probe = g.admit().expect("one probe after the cooldown");
        assert!(g.admit().is_none(), "only one probe at a time");
        probe.succeeded();
        drop(probe);
        assert!(g.admit().is_some(), "closed again");
    }

    #[test]
    fn a_failed_probe_opens_the_circuit_again() {
        let g = guard(8, 1, 30);
        g.admit().expect("closed").failed();
        assert!(g.admit().is_none());
        std::thread::sleep(Duration::from_millis(40));
        g.admit().expect("probe").failed();
        assert!(g.admit().is_none(), "open again");
    }

    #[test]
    fn a_probe_abandoned_without_an_answer_lets_another_probe() {
        let g = guard(8, 1, 10);
        g.admit().expect("closed").failed();
        std::thread::sleep(Duration::from_millis(20));
        drop(g.admit().expect("probe"));
        assert!(g.admit().is_some(), "a new probe");
    }

    #[test]
    fn the_wait_between_probes_doubles_while_they_fail_and_resets_on_success() {
        let ms = Duration::from_millis;
        let g = backing_off(8, 1, 100, 300);
        g.admit().expect("closed").failed();
        assert!(g.admit().is_none(), "open");
        std::thread::sleep(ms(120));
        g.admit().expect("first probe after 100 ms").failed();
        std::thread::sleep(ms(100));
        assert!(g.admit().is_none(), "the second wait is 200 ms");
        std::thread::sleep(ms(120));
        g.admit().expect("second probe after 200 ms").failed();
        std::thread::sleep(ms(200));
        assert!(g.admit().is_none(), "the third wait is 300 ms");
        std::thread::sleep(ms(150));
        let mut probe = g.admit().expect("capped at the 300 ms cooldown, not 400");
        probe.succeeded();
        drop(probe);
        // Closed; a new run of failures starts from the first wait again.
        g.admit().expect("closed again").failed();
        std::thread::sleep(ms(120));
        assert!(
            g.admit().is_some(),
            "the first wait again, not the cooldown"
        );
    }

    #[test]
    fn answers_of_requests_admitted_before_the_circuit_opened_do_not_reopen_it() {
        let g = backing_off(8, 1, 40, 1000);
        let mut late = g.admit().expect("closed");
        g.admit().expect("closed").failed();
        late.failed();
        std::thread::sleep(Duration::from_millis(50));
        assert!(g.admit().is_some(), "the first wait was not extended");
    }
}
