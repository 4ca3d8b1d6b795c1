//! Progress of `edgecache migrate`: counters, a progress bar on a terminal or plain log
//! lines otherwise, an optional Prometheus text file (for node_exporter's textfile
//! collector), rate limits, and the summary printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How many keys each failure reason lists in the summary.
const EXAMPLES_PER_REASON: usize = 5;

#[derive(Default)]
pub struct Counters {
    pub moved: AtomicU64,
    pub skipped: AtomicU64,
    /// Keys whose media was deleted (a tombstone): never copied.
    pub tombstoned: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
    /// Keys the source has, once known (0 until then).
    pub total: AtomicU64,
    pub total_known: AtomicBool,
    failures: Mutex<BTreeMap<String, (u64, Vec<String>)>>,
}

impl Counters {
    pub fn fail(&self, key: &str, reason: impl Into<String>) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let reason = reason.into();
        tracing::warn!(key, reason = %reason, "not migrated");
        let mut failures = self.failures.lock();
        let (count, examples) = failures.entry(reason).or_default();
        *count += 1;
        if examples.len() < EXAMPLES_PER_REASON {
            examples.push(key.to_string());
        }
    }

    fn done(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
            + self.skipped.load(Ordering::Relaxed)
            + self.tombstoned.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }

    /// Objects the source has that the stores may still lack, when the total is known.
    fn remaining(&self) -> Option<u64> {
        self.total_known.load(Ordering::Relaxed).then(|| {
            self.total.load(Ordering::Relaxed).saturating_sub(
                self.moved.load(Ordering::Relaxed)
                    + self.skipped.load(Ordering::Relaxed)
                    + self.tombstoned.load(Ordering::Relaxed),
            )
        })
    }
}

/// The end of a run.
pub struct Summary {
    pub moved: u64,
    pub skipped: u64,
    pub tombstoned: u64,
    pub failed: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub failures: BTreeMap<String, (u64, Vec<String>)>,
    pub dry_run: bool,
}

impl Summary {
    pub fn of(counters: &Counters, elapsed: Duration, dry_run: bool) -> Summary {
        Summary {
            moved: counters.moved.load(Ordering::Relaxed),
            skipped: counters.skipped.load(Ordering::Relaxed),
            tombstoned: counters.tombstoned.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            bytes: counters.bytes.load(Ordering::Relaxed),
            elapsed,
            failures: counters.failures.lock().clone(),
            dry_run,
        }
    }

    pub fn text(&self) -> String {
        let seconds = self.elapsed.as_secs_f64().max(0.001);
        let verb = if self.dry_run { "would move" } else { "moved" };
        let mut out = format!(
            "migrate: {verb} {} objects ({}), skipped {}, deleted media left alone {}, failed {} in {:.1}s ({:.1} objects/s, {}/s)\n",
            self.moved,
            human_bytes(self.bytes),
            self.skipped,
            self.tombstoned,
            self.failed,
            seconds,
            self.moved as f64 / seconds,
            human_bytes((self.bytes as f64 / seconds) as u64),
        );
        for (reason, (count, examples)) in &self.failures {
            let _ = writeln!(
                out,
                "  failed ({count}): {reason}; e.g. {}",
                examples.join(", ")
            );
        }
        out
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A token bucket: at most `per_second` units a second, bursts of one second's worth.
pub struct RateLimit {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(per_second: f64) -> RateLimit {
        RateLimit {
            per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    /// Waits until `units` may pass (at once for a limit that is not a positive number).
    pub async fn take(&self, units: f64) {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return;
        }
        let wait = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let (tokens, last) = *state;
            let refilled = (tokens + now.duration_since(last).as_secs_f64() * self.per_second)
                .min(self.per_second);
            let left = refilled - units;
            *state = (left, now);
            if left >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-left / self.per_second)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Reports progress until told to stop.
pub struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    metrics_file: Option<PathBuf>,
    started: Instant,
}

impl Reporter {
    pub fn new(metrics_file: Option<PathBuf>, quiet: bool) -> Reporter {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {pos}/{len} objects {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Reporter {
            bar,
            metrics_file,
            started: Instant::now(),
        }
    }

    /// Updates the bar (or logs a line) and the metrics file.
    pub fn report(&self, counters: &Counters, log_line: bool) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let rate = format!(
            "{} moved, {} skipped, {} failed, {} ({}/s)",
            counters.moved.load(Ordering::Relaxed),
            counters.skipped.load(Ordering::Relaxed),
            counters.failed.load(Ordering::Relaxed),
            human_bytes(bytes),
            human_bytes((bytes as f64 / elapsed) as u64)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_length(counters.total.load(Ordering::Relaxed).max(counters.done()));
                bar.set_position(counters.done());
                bar.set_message(rate);
            }
            None if log_line => {
                let done = counters.done();
                let eta = counters.remaining().and_then(|left| {
                    let per_second = done as f64 / elapsed;
                    (per_second > 0.0).then(|| format!(", ETA {:.0}s", left as f64 / per_second))
                });
                let total = if counters.total_known.load(Ordering::Relaxed) {
                    counters.total.load(Ordering::Relaxed).to_string()
                } else {
                    "?".to_string()
                };
                tracing::info!(
                    "migrate: {done}/{total} objects: {rate}{}",
                    eta.unwrap_or_default()
                );
            }
            None => {}
        }
        if let Some(path) = &self.metrics_file {
            if let Err(e) = write_metrics(path, counters) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the metrics file");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The counters in the Prometheus text format, written whole then renamed into place.
fn write_metrics(path: &std::path::Path, counters: &Counters) -> std::io::Result<()> {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# HELP edgecache_migrate_objects_total Objects handled by edgecache migrate, by result."
    );
    let _ = writeln!(text, "# TYPE edgecache_migrate_objects_total counter");
    for (result, value) in [
        ("moved", &counters.moved),
        ("skipped", &counters.skipped),
        ("tombstoned", &counters.tombstoned),
        ("failed", &counters.failed),
    ] {
        let _ = writeln!(
            text,
            "edgecache_migrate_objects_total{{result=\"{result}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        text,
        "# HELP edgecache_migrate_bytes_total Bytes moved by edgecache migrate."
    );
    let _ = writeln!(text, "# TYPE edgecache_migrate_bytes_total counter");
    let _ = writeln!(
        text,
        "edgecache_migrate_bytes_total {}",
        counters.bytes.load(Ordering::Relaxed)
    );
    if let Some(remaining) = counters.remaining() {
        let _ = writeln!(text, "# HELP edgecache_migrate_remaining_objects Objects the source has that the stores may still lack.");
        let _ = writeln!(text, "# TYPE edgecache_migrate_remaining_objects gauge");
        let _ = writeln!(text, "edgecache_migrate_remaining_objects {remaining}");
    }
    let temp = path.with_extension("prom.tmp");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[tokio::test]
    async fn the_rate_limit_spreads_work_over_time() {
        let limit = RateLimit::new(20.0);
        let started = Instant::now();
        for _ in 0..30 {
            limit.take(1.0).await;
        }
        // 20 pass at once (one second's burst), the other 10 take half a second.
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }
}
