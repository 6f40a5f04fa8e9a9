//! Time as an input: the core never reads a clock.

use std::time::Duration;

/// A point in time, as a duration since an epoch chosen by the caller
/// (the daemon uses its own start). Only differences between timestamps
/// mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Duration);

impl Timestamp {
    /// The epoch.
    pub const ZERO: Timestamp = Timestamp(Duration::ZERO);

    /// `d` after the epoch.
    pub const fn from_duration(d: Duration) -> Self {
        Timestamp(d)
    }

    /// `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp(Duration::from_secs(secs))
    }

    /// `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(Duration::from_millis(ms))
    }

    /// The time elapsed since `earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The duration since the epoch.
    pub const fn as_duration(self) -> Duration {
        self.0
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0 + rhs)
    }
}
