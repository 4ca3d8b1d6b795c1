//! Where a hit is read from, as the metrics label it: one enum, so a new tier cannot fall
//! into another's counters.

use std::sync::LazyLock;

use prometheus::IntCounter;

use crate::metrics;

/// Where a hit's body comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tier {
    Memory,
    Disk,
    /// A body still arriving, read as it is written.
    Fill,
}

impl Tier {
    const ALL: [Tier; 3] = [Tier::Memory, Tier::Disk, Tier::Fill];

    /// The `tier` label of the cache metrics.
    pub(super) fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::Fill => "fill",
        }
    }

    /// This tier's hit counters, looked up once rather than on every request.
    pub(super) fn counters(self) -> &'static TierCounters {
        &TIER_COUNTERS[self as usize]
    }

    pub(super) fn count_hit(self) {
        self.counters().hits.inc();
    }
}

/// The per-tier counters a hit touches.
pub(super) struct TierCounters {
    pub(super) hits: IntCounter,
    pub(super) read_bytes: IntCounter,
}

static TIER_COUNTERS: LazyLock<[TierCounters; 3]> = LazyLock::new(|| {
    let m = metrics::get();
    Tier::ALL.map(|tier| TierCounters {
        hits: m.cache_tier_hits.with_label_values(&[tier.label()]),
        read_bytes: m.cache_tier_read_bytes.with_label_values(&[tier.label()]),
    })
});

/// Lookups the memory tier could not answer.
pub(super) static MEMORY_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::get()
        .cache_tier_misses
        .with_label_values(&[Tier::Memory.label()])
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tier_has_its_own_counters() {
        for (i, tier) in Tier::ALL.iter().enumerate() {
            assert_eq!(*tier as usize, i);
        }
        let before = Tier::Disk.counters().hits.get();
        Tier::Disk.count_hit();
        assert_eq!(Tier::Disk.counters().hits.get(), before + 1);
        assert_eq!(Tier::Fill.label(), "fill");
    }
}
