//! Protection for a place that may be dying (an old server's failing disks): at most
//! `max_concurrency` requests in flight, bodies included, and a circuit breaker that stops
//! sending after `failures` failures in a row, then lets one probe through per `cooldown`.
//!
//! A request that is refused is not queued: the chain moves on at once, so the edge never
//! piles requests onto a place that is already slow.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::model::BreakerSettings;
use crate::metrics;

#[derive(Debug)]
enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everything else is refused until it reports.
    Probing,
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
            let mut circuit = self.guard.circuit.lock();
            if matches!(*circuit, Circuit::Probing) {
                *circuit = Circuit::Open {
                    until: Instant::now(),
                };
            }
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
                Circuit::Probing => return None,
                Circuit::Open { until } => {
                    if Instant::now() < until {
                        return None;
                    }
                    *circuit = Circuit::Probing;
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
                let mut circuit = self.circuit.lock();
                if matches!(*circuit, Circuit::Probing) {
                    *circuit = Circuit::Open {
                        until: Instant::now(),
                    };
                }
                None
            }
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
        let open = match *circuit {
            Circuit::Closed { failures } => {
                let failures = failures + 1;
                if failures < self.breaker.failures {
                    *circuit = Circuit::Closed { failures };
                    return;
                }
                true
            }
            Circuit::Probing => true,
            Circuit::Open { .. } => false,
        };
        if open {
            *circuit = Circuit::Open {
                until: Instant::now() + self.breaker.cooldown,
            };
            self.set_open_gauge(true);
            tracing::warn!(
                store = %self.store,
                cooldown = ?self.breaker.cooldown,
                "store keeps failing; requests to it are held back"
            );
        }
    }

    fn set_open_gauge(&self, open: bool) {
        metrics::get()
            .media_store_circuit_open
            .with_label_values(&[self.store.as_str()])
            .set(i64::from(open));
    }

    #[cfg(test)]
    fn cooldown(&self) -> std::time::Duration {
        self.breaker.cooldown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard(limit: usize, failures: u32, cooldown_ms: u64) -> Arc<Guard> {
        Arc::new(Guard::new(
            "old",
            limit,
            BreakerSettings {
                failures,
                cooldown: Duration::from_millis(cooldown_ms),
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
        std::thread::sleep(g.cooldown() + Duration::from_millis(10));
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
}
