//! The busiest topics, estimated for monitoring at a bounded cost: one
//! inbound PUBLISH in [`SAMPLE_EVERY`] on average is sampled (at gaps drawn
//! from a PRNG seeded by `Config::random_seed`, so traffic that cycles
//! through topics cannot line up with the sampling), into at most
//! [`TRACKED`] counters (the Space-Saving scheme: a topic not tracked
//! replaces the least counted one and inherits its count), halved every
//! [`DECAY`] so the ranking follows current traffic.

use super::Instant;
use crate::topic::TopicName;
use alloc::vec::Vec;
use core::time::Duration;

/// One inbound PUBLISH in this many, on average, is sampled.
pub const SAMPLE_EVERY: u32 = 16;

/// Topics tracked at once.
pub const TRACKED: usize = 32;

/// Counts are halved this often (engine time), so a topic that went quiet
/// drops out.
pub const DECAY: Duration = Duration::from_secs(10);

/// The longest topic tracked; longer ones are not sampled, so the table
/// holds at most [`TRACKED`] times this many bytes.
pub const MAX_TOPIC: usize = 256;

pub(super) struct TopicSampler {
    /// Publishes until the next sample.
    countdown: u32,
    rng: u64,
    counts: Vec<(TopicName, u32)>,
    decayed_at: Instant,
}

impl TopicSampler {
    pub(super) fn new(now: Instant, seed: u64) -> Self {
        TopicSampler {
            countdown: SAMPLE_EVERY,
            rng: seed | 1,
            counts: Vec::new(),
            decayed_at: now,
        }
    }

    /// Counts one inbound PUBLISH to `topic`. Allocates only when a sampled
    /// topic enters the table.
    pub(super) fn publish(&mut self, topic: &TopicName, now: Instant) {
        self.countdown -= 1;
        if self.countdown > 0 {
            return;
        }
        // xorshift64: the next gap is 1 ..= 2 * SAMPLE_EVERY - 1.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.countdown = 1 + (self.rng % u64::from(2 * SAMPLE_EVERY - 1)) as u32;
        if topic.as_str().len() > MAX_TOPIC {
            return;
        }
        if now.saturating_duration_since(self.decayed_at) >= DECAY {
            self.decayed_at = now;
            for (_, n) in &mut self.counts {
                *n /= 2;
            }
            self.counts.retain(|(_, n)| *n > 0);
        }
        if let Some((_, n)) = self.counts.iter_mut().find(|(t, _)| t == topic) {
            *n = n.saturating_add(1);
            return;
        }
        // Copied: the name may be a slice of a large read buffer, which it
        // would otherwise keep alive.
        let Ok(owned) = TopicName::copy_from_str(topic.as_str()) else {
            return;
        };
        if self.counts.len() < TRACKED {
            self.counts.push((owned, 1));
        } else if let Some(least) = self.counts.iter_mut().min_by_key(|(_, n)| *n) {
            *least = (owned, least.1.saturating_add(1));
        }
    }

    /// Up to `n` topics, busiest first, with their estimated share of the
    /// sampled publishes (0.0 ..= 1.0).
    pub(super) fn busiest(&self, n: usize) -> Vec<(TopicName, f64)> {
        let total: u64 = self.counts.iter().map(|(_, c)| u64::from(*c)).sum();
        let mut top: Vec<(TopicName, f64)> = self
            .counts
            .iter()
            .map(|(t, c)| (t.clone(), f64::from(*c) / total.max(1) as f64))
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }
}
