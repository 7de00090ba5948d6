//! The in-memory backend (WEB-4): a map from bucket and key to the two counters, split into
//! shards so that concurrent requests rarely wait on one lock.
//!
//! Memory is bounded. An entry whose windows have both passed is worth nothing and is swept
//! away; and however many addresses a client rotates through, a shard never holds more than
//! its share of `capacity`: when it is full, the entries with the smallest counts (one-off
//! visitors) go first, so the heavy hitters whose counts matter stay tracked.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use super::{Bucket, Counts, Decision, Limit, admit, decision};

/// Keys held at most by a server's in-memory limiter, about 120 bytes each.
pub(crate) const MAX_KEYS: usize = 100_000;

const SHARDS: usize = 16;

/// How often a shard sweeps out expired entries even when it is not full.
const SWEEP_EVERY_MS: u64 = 10_000;

pub(crate) struct Windows {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<(Bucket, Box<str>), Entry>,
    next_sweep_ms: u64,
}

struct Entry {
    counts: Counts,
    /// The window in which this key was last refused, so that only its first refusal in a
    /// window is reported.
    refused_in: Option<u64>,
    /// After this instant both counters have faded to nothing.
    expires_ms: u64,
}

impl Windows {
    /// A limiter holding at most about `capacity` keys.
    pub(crate) fn new(capacity: usize) -> Windows {
        let shards = SHARDS.min(capacity.max(1));
        Windows {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn check(&self, bucket: Bucket, key: &str, limit: Limit, now: u64) -> Decision {
        let index = (self.hasher.hash_one((bucket, key)) as usize) % self.shards.len();
        // A poisoned lock only means another request panicked mid-update of plain counters;
        // they are still usable.
        let mut shard = self.shards[index].lock().unwrap_or_else(|e| e.into_inner());
        shard.sweep_if_due(now, self.per_shard);
        let lookup = (bucket, Box::<str>::from(key));
        let stored = shard.entries.get(&lookup);
        let (counts, allowed) = admit(stored.map(|e| e.counts), limit, now);
        let first_refusal = !allowed && stored.and_then(|e| e.refused_in) != Some(counts.window);
        let refused_in = if allowed {
            stored.and_then(|e| e.refused_in)
        } else {
            Some(counts.window)
        };
        shard.entries.insert(
            lookup,
            Entry {
                counts,
                refused_in,
                expires_ms: (counts.window + 2) * limit.window_ms,
            },
        );
        decision(counts, allowed, first_refusal, limit, now)
    }

    /// Keys held now (for the memory-bound tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }
}

impl Shard {
    /// Makes room for one more entry: expired entries go on schedule or when the shard is
    /// full; if it is still full, the entries with the smallest counts go until an eighth of
    /// the shard is free, so that eviction is rare rather than once per request.
    fn sweep_if_due(&mut self, now: u64, capacity: usize) {
        let full = self.entries.len() >= capacity;
        if now >= self.next_sweep_ms || full {
            self.entries.retain(|_, e| e.expires_ms > now);
            self.next_sweep_ms = now + SWEEP_EVERY_MS;
        }
        if self.entries.len() < capacity {
            return;
        }
        let keep = capacity - capacity / 8 - 1;
        let mut weights: Vec<u64> = self
            .entries
            .values()
            .map(|e| e.counts.current + e.counts.previous)
            .collect();
        let cut = self.entries.len() - keep;
        let (_, threshold, _) = weights.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        // Entries under the threshold go first, then entries at it until enough are gone.
        let mut at_threshold = cut - weights[..cut].iter().filter(|w| **w < threshold).count();
        self.entries.retain(|_, e| {
            let w = e.counts.current + e.counts.previous;
            if w < threshold {
                false
            } else if w == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
    }
}
