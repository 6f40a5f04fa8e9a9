//! Seeded, deterministic link emulation for one direction of a cable
//! (what vde's wirefilter does): loss, duplication, reordering, corruption,
//! delay with jitter, a rate limit, an MTU and a bounded in-flight queue.
//!
//! [`Impair::decide`] returns the [`Fate`] of one frame; the caller carries
//! it out (drops the frame, or hands `copies` copies to the other side at
//! `at`, flipping the corrupted byte first). Time is an argument and the
//! randomness comes from a seeded splitmix64 generator, so the same seed,
//! configuration and inputs always give the same fates.
//!
//! For each frame, in this order:
//!
//! 1. **MTU**: a frame longer than `mtu` is dropped ([`DropCause::Mtu`]).
//! 2. **Loss**: with probability `loss_pct` % the frame is dropped
//!    ([`DropCause::Loss`]).
//! 3. **Rate**: with `rate_bps`, the link serialises one frame at a time:
//!    transmission starts at the later of `now` and the end of the previous
//!    frame and lasts `len * 8 / rate_bps` seconds; the frame *departs* when
//!    its transmission ends. Without a rate it departs at `now`.
//! 4. **Delay and jitter**: `at = departure + delay + j`, with `j` uniform in
//!    `[-jitter, +jitter]` (nanosecond resolution), but never before the
//!    departure (so never before `now`). Jitter alone can reorder frames, as
//!    with netem.
//! 5. **Reorder**: with probability `reorder_pct` % the frame is held an
//!    extra [`REORDER_HOLD`] (1 ms), so frames sent less than 1 ms after it
//!    overtake it.
//! 6. **Queue**: frames whose `at` lies in the future are *in flight*. If
//!    `max_in_flight` of them are already in flight, the frame is dropped
//!    ([`DropCause::QueueFull`]) and leaves no trace on the link (it does not
//!    occupy the rate limiter). A frame due at `now` is never in flight.
//! 7. **Duplication**: with probability `dup_pct` %, `copies` is 2 (both
//!    copies are due at `at`; a duplicate occupies no extra link time or
//!    queue slot).
//! 8. **Corruption**: with probability `corrupt_pct` %, one bit of one
//!    uniformly chosen byte is flipped: `corrupt = Some((index, mask))` with
//!    `index < frame_len` and `mask` a single bit. It applies to every copy.
//!    Frames of length 0 are never corrupted.
//!
//! ```
//! use std::time::Duration;
//! use uml_switch_proto::{Fate, Impair, ImpairConfig, Timestamp};
//!
//! let config = ImpairConfig { delay: Duration::from_millis(20), ..Default::default() };
//! config.validate().unwrap();
//! let mut link = Impair::new(config, 42);
//! let now = Timestamp::from_secs(1);
//! assert_eq!(
//!     link.decide(now, 60),
//!     Fate::Deliver { at: now + Duration::from_millis(20), copies: 1, corrupt: None },
//! );
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::Timestamp;

/// `max_in_flight` used when the configuration says 0.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Extra hold of a frame chosen for reordering.
pub const REORDER_HOLD: Duration = Duration::from_millis(1);

/// The largest `delay` or `jitter` [`ImpairConfig::validate`] accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Link emulation parameters for one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImpairConfig {
    /// Probability (percent, 0..=100) that a frame is lost.
    pub loss_pct: f64,
    /// Probability (percent) that a delivered frame arrives twice.
    pub dup_pct: f64,
    /// Probability (percent) that a delivered frame is held an extra
    /// [`REORDER_HOLD`].
    pub reorder_pct: f64,
    /// Probability (percent) that a delivered frame has one bit flipped.
    pub corrupt_pct: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Maximum deviation from `delay`, uniform in both directions.
    pub jitter: Duration,
    /// Link rate in bits per second; `None` = unlimited.
    pub rate_bps: Option<u64>,
    /// Longest frame carried; longer frames are dropped. `None` = no limit.
    pub mtu: Option<usize>,
    /// Most frames in flight (scheduled for a future time) at once;
    /// 0 = [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
}

impl ImpairConfig {
    /// Checks that percentages are finite and within 0..=100, `delay` and
    /// `jitter` at most [`MAX_DELAY`], and `rate_bps` and `mtu` non-zero.
    /// The message names the offending field and value.
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("loss", self.loss_pct),
            ("duplication", self.dup_pct),
            ("reorder", self.reorder_pct),
            ("corruption", self.corrupt_pct),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(format!(
                    "{name} probability {value}% is not a percentage between 0 and 100"
                ));
            }
        }
        for (name, value) in [("delay", self.delay), ("jitter", self.jitter)] {
            if value > MAX_DELAY {
                return Err(format!(
                    "{name} of {value:?} is longer than the maximum of {MAX_DELAY:?}"
                ));
            }
        }
        if self.rate_bps == Some(0) {
            return Err("rate of 0 bit/s would carry nothing; omit the rate for no limit".into());
        }
        if self.mtu == Some(0) {
            return Err("MTU of 0 bytes would carry nothing; omit the MTU for no limit".into());
        }
        Ok(())
    }

    /// True if this configuration delivers every frame once, unchanged, at
    /// the time it was sent (`max_in_flight` is then irrelevant).
    pub fn is_transparent(&self) -> bool {
        self.loss_pct == 0.0
            && self.dup_pct == 0.0
            && self.reorder_pct == 0.0
            && self.corrupt_pct == 0.0
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && self.rate_bps.is_none()
            && self.mtu.is_none()
    }

    fn effective_max_in_flight(&self) -> usize {
        if self.max_in_flight == 0 {
            DEFAULT_MAX_IN_FLIGHT
        } else {
            self.max_in_flight
        }
    }
}

/// Why [`Impair`] dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// Random loss (`loss_pct`).
    Loss,
    /// Longer than `mtu`.
    Mtu,
    /// `max_in_flight` frames were already in flight.
    QueueFull,
}

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Discard it.
    Drop(DropCause),
    /// Hand it to the other side.
    Deliver {
        /// When to deliver it: never before the `now` it was decided at.
        at: Timestamp,
        /// How many copies to deliver: 1, or 2 when duplicated.
        copies: u8,
        /// `Some((index, mask))`: XOR `frame[index]` with `mask` (non-zero,
        /// one bit) before delivering every copy. `index < frame_len`.
        corrupt: Option<(usize, u8)>,
    },
}

/// Counters of an [`Impair`]; each frame passed to [`Impair::decide`]
/// increments `frames_in` and at most one `dropped_*` counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImpairStats {
    /// Frames passed to `decide`.
    pub frames_in: u64,
    /// Frames delivered (`Fate::Deliver`, counted once even if duplicated).
    pub delivered: u64,
    /// Frames dropped by random loss.
    pub dropped_loss: u64,
    /// Frames dropped for exceeding the MTU.
    pub dropped_mtu: u64,
    /// Frames dropped because `max_in_flight` frames were in flight.
    pub dropped_queue: u64,
    /// Delivered frames given a second copy.
    pub duplicated: u64,
    /// Delivered frames with a flipped bit.
    pub corrupted: u64,
    /// Delivered frames held an extra [`REORDER_HOLD`].
    pub reordered: u64,
}

/// splitmix64: tiny, fast, and good enough for link emulation.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `pct` percent. Draws nothing when `pct` is 0,
    /// so disabled impairments do not perturb the sequence.
    fn chance(&mut self, pct: f64) -> bool {
        pct > 0.0 && self.next_f64() * 100.0 < pct
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Link emulation for one direction; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Impair {
    config: ImpairConfig,
    max_in_flight: usize,
    rng: Rng,
    /// When the rate limiter finishes sending the last accepted frame.
    link_free: Timestamp,
    /// Due times of frames in flight (min-heap); never longer than
    /// `max_in_flight`.
    in_flight: BinaryHeap<Reverse<Timestamp>>,
    stats: ImpairStats,
}

impl Impair {
    /// A link with `config`, its randomness seeded by `seed`.
    ///
    /// # Panics
    ///
    /// If `config` fails [`ImpairConfig::validate`]: validate user input
    /// first.
    pub fn new(config: ImpairConfig, seed: u64) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid ImpairConfig: {e}");
        }
        Impair {
            max_in_flight: config.effective_max_in_flight(),
            config,
            rng: Rng(seed),
            link_free: Timestamp::ZERO,
            in_flight: BinaryHeap::new(),
            stats: ImpairStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ImpairConfig {
        &self.config
    }

    /// Decides the fate of a frame of `frame_len` bytes sent at `now`.
    /// `now` should not go backwards between calls.
    pub fn decide(&mut self, now: Timestamp, frame_len: usize) -> Fate {
        self.stats.frames_in += 1;
        while self.in_flight.peek().is_some_and(|Reverse(t)| *t <= now) {
            self.in_flight.pop();
        }

        if self.config.mtu.is_some_and(|mtu| frame_len > mtu) {
            self.stats.dropped_mtu += 1;
            return Fate::Drop(DropCause::Mtu);
        }
        if self.rng.chance(self.config.loss_pct) {
            self.stats.dropped_loss += 1;
            return Fate::Drop(DropCause::Loss);
        }

        let (departure, link_free) = match self.config.rate_bps {
            Some(rate) => {
                let start = now.max(self.link_free);
                let departure = start + serialisation_time(frame_len, rate);
                (departure, Some(departure))
            }
            None => (now, None),
        };
        let mut at = departure + self.jittered_delay();
        let reordered = self.rng.chance(self.config.reorder_pct);
        if reordered {
            at = at + REORDER_HOLD;
        }
        let duplicated = self.rng.chance(self.config.dup_pct);
        let corrupt = if frame_len > 0 && self.rng.chance(self.config.corrupt_pct) {
            let index = self.rng.below(frame_len as u64) as usize;
            let mask = 1u8 << self.rng.below(8);
            Some((index, mask))
        } else {
            None
        };

        if at > now {
            if self.in_flight.len() >= self.max_in_flight {
                self.stats.dropped_queue += 1;
                return Fate::Drop(DropCause::QueueFull);
            }
            self.in_flight.push(Reverse(at));
        }
        if let Some(free) = link_free {
            self.link_free = free;
        }
        self.stats.delivered += 1;
        self.stats.reordered += u64::from(reordered);
        self.stats.duplicated += u64::from(duplicated);
        self.stats.corrupted += u64::from(corrupt.is_some());
        Fate::Deliver {
            at,
            copies: if duplicated { 2 } else { 1 },
            corrupt,
        }
    }

    /// `delay` plus a uniform deviation in `[-jitter, +jitter]`, floored
    /// at zero. Draws nothing without jitter.
    fn jittered_delay(&mut self) -> Duration {
        let delay = self.config.delay;
        let jitter = self.config.jitter;
        if jitter.is_zero() {
            return delay;
        }
        // Both are at most MAX_DELAY, so nanoseconds fit in u64 and i128.
        let j = jitter.as_nanos() as u64;
        let offset = i128::from(self.rng.below(2 * j + 1)) - i128::from(j);
        let total = (delay.as_nanos() as i128 + offset).max(0);
        Duration::from_nanos(total as u64)
    }

    /// Frames currently in flight, as of the last `decide` call.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The counters.
    pub fn stats(&self) -> &ImpairStats {
        &self.stats
    }
}

/// Time to send `len` bytes at `rate` bit/s, rounded up to the nanosecond.
fn serialisation_time(len: usize, rate: u64) -> Duration {
    let bits = len as u128 * 8;
    let nanos = (bits * 1_000_000_000).div_ceil(u128::from(rate));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}
