//! The forwarding database: which port a (VLAN, MAC) pair was last seen on.
//!
//! Time is an input ([`Timestamp`]); the table never reads a clock. Three
//! rules bound what a misbehaving network can do to it:
//!
//! - **Ageing.** An entry not refreshed for [`FdbConfig::ageing`] is gone:
//!   lookups ignore it at once and [`Fdb::expire`] reclaims its memory.
//! - **Move hysteresis.** A MAC seen on another port within
//!   [`FdbConfig::min_persistence`] is not moved (vde_switch's "minimum
//!   persistence"), so a looped or spoofed frame cannot steal a live
//!   station's entry.
//! - **Size cap.** At [`FdbConfig::max_entries`] the table first reclaims
//!   expired entries, then refuses new ones: a flood of random source MACs
//!   costs bounded memory; the frames of unlearned stations still arrive,
//!   by flooding.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::mac::MacAddr;
use crate::switch::PortId;
use crate::time::Timestamp;

/// Limits and timers of the forwarding database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbConfig {
    /// The most entries the table holds.
    pub max_entries: usize,
    /// How long an entry lives without being refreshed.
    pub ageing: Duration,
    /// How long after its last frame a MAC stays on its port even when it
    /// appears on another one.
    pub min_persistence: Duration,
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            max_entries: 65_536,
            ageing: Duration::from_secs(300),
            min_persistence: Duration::from_secs(3),
        }
    }
}

/// What [`Fdb::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    New,
    /// An existing entry on the same port, its time refreshed.
    /// `announce` is true at most once per [`ANNOUNCE_INTERVAL`] per entry:
    /// when replicas of the table elsewhere should hear of the refresh.
    Refreshed { announce: bool },
    /// The MAC moved here from `from`.
    Moved { from: PortId },
    /// The MAC was seen on `owner` too recently to move; nothing changed.
    MoveRefused { owner: PortId },
    /// The table is full; nothing was learned.
    TableFull,
    /// Group (multicast or broadcast) source addresses are never learned.
    GroupSource,
}

/// How often a refresh of a live entry is worth telling other replicas of
/// the table about (see [`Learned::Refreshed`]).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    last_seen: Timestamp,
    /// When this entry was last new, moved or announced as refreshed.
    announced: Timestamp,
}

/// A key packs the 12-bit VLAN id above the 48-bit MAC.
fn key(vlan: u16, mac: MacAddr) -> u64 {
    (u64::from(vlan & 0x0fff) << 48) | mac.to_u64()
}

/// A fast hash for 64-bit keys, keyed by a secret seed so that senders
/// who choose MAC addresses cannot choose hash collisions.
#[derive(Clone, Copy, Debug)]
struct SeededKeyHash {
    seed: u64,
}

impl BuildHasher for SeededKeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

struct KeyHasher {
    state: u64,
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // A 64-bit finaliser (splitmix64): every input bit reaches every
        // output bit, including the top seven that the table probes with.
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.state = (self.state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.state = self.state.rotate_left(29) ^ v;
    }
}

/// The forwarding database.
#[derive(Debug, Clone)]
pub struct Fdb {
    config: FdbConfig,
    entries: HashMap<u64, Entry, SeededKeyHash>,
    /// When the last full sweep for expired entries ran; a full table
    /// sweeps at most once per second.
    last_sweep: Option<Timestamp>,
}

impl Entry {
    fn new(port: PortId, now: Timestamp) -> Self {
        Entry {
            port,
            last_seen: now,
            announced: now,
        }
    }
}

impl Fdb {
    /// An empty table. `hash_seed` should be random (the daemon draws it
    /// from the OS); tests may fix it.
    pub fn new(config: FdbConfig, hash_seed: u64) -> Self {
        let capacity = config.max_entries.min(1024);
        Fdb {
            config,
            entries: HashMap::with_capacity_and_hasher(capacity, SeededKeyHash { seed: hash_seed }),
            last_sweep: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &FdbConfig {
        &self.config
    }

    fn is_live(&self, entry: &Entry, now: Timestamp) -> bool {
        now.saturating_since(entry.last_seen) < self.config.ageing
    }

    /// Records that `mac` on `vlan` was seen on `port` at `now`.
    pub fn learn(&mut self, now: Timestamp, vlan: u16, mac: MacAddr, port: PortId) -> Learned {
        if mac.is_group() {
            return Learned::GroupSource;
        }
        let k = key(vlan, mac);
        let (ageing, min_persistence) = (self.config.ageing, self.config.min_persistence);
        if let Some(entry) = self.entries.get_mut(&k) {
            let age = now.saturating_since(entry.last_seen);
            if entry.port == port {
                entry.last_seen = now;
                let announce = now.saturating_since(entry.announced) >= ANNOUNCE_INTERVAL;
                if announce {
                    entry.announced = now;
                }
                return Learned::Refreshed { announce };
            }
            if age < min_persistence && age < ageing {
                return Learned::MoveRefused { owner: entry.port };
            }
            let from = entry.port;
            *entry = Entry::new(port, now);
            return if age < ageing {
                Learned::Moved { from }
            } else {
                Learned::New
            };
        }
        if !self.make_room(now) {
            return Learned::TableFull;
        }
        self.entries.insert(k, Entry::new(port, now));
        Learned::New
    }

    /// Applies what another replica of the table learned: `mac` on `vlan`
    /// is on `port` as of `now`. No hysteresis (the replica that saw the
    /// frame applied it); the size cap holds. Returns false if the table
    /// was full.
    pub fn learn_remote(&mut self, now: Timestamp, vlan: u16, mac: MacAddr, port: PortId) -> bool {
        let k = key(vlan, mac);
        if let Some(entry) = self.entries.get_mut(&k) {
            *entry = Entry::new(port, now);
            return true;
        }
        if !self.make_room(now) {
            return false;
        }
        self.entries.insert(k, Entry::new(port, now));
        true
    }

    /// True if one more entry fits, after reclaiming expired entries if the
    /// table is full (at most one sweep per second).
    fn make_room(&mut self, now: Timestamp) -> bool {
        if self.entries.len() < self.config.max_entries {
            return true;
        }
        let swept_recently = self
            .last_sweep
            .is_some_and(|t| now.saturating_since(t) < Duration::from_secs(1));
        !swept_recently && self.expire(now) > 0
    }

    /// The port `mac` on `vlan` was last seen on, unless that has aged out.
    pub fn lookup(&self, now: Timestamp, vlan: u16, mac: MacAddr) -> Option<PortId> {
        self.entries
            .get(&key(vlan, mac))
            .filter(|e| self.is_live(e, now))
            .map(|e| e.port)
    }

    /// Removes every aged-out entry; returns how many went.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let before = self.entries.len();
        let ageing = self.config.ageing;
        self.entries
            .retain(|_, e| now.saturating_since(e.last_seen) < ageing);
        self.last_sweep = Some(now);
        before - self.entries.len()
    }

    /// Removes every entry of `port` (it went away); returns how many went.
    pub fn flush_port(&mut self, port: PortId) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.port != port);
        before - self.entries.len()
    }

    /// The number of entries, live or not yet reclaimed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every live entry as (VLAN, MAC, port, age), in no particular order.
    pub fn entries(
        &self,
        now: Timestamp,
    ) -> impl Iterator<Item = (u16, MacAddr, PortId, Duration)> + '_ {
        self.entries
            .iter()
            .filter(move |(_, e)| self.is_live(e, now))
            .map(move |(k, e)| {
                (
                    (k >> 48) as u16,
                    MacAddr::from_u64(*k),
                    e.port,
                    now.saturating_since(e.last_seen),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P1: PortId = PortId(1);
    const P2: PortId = PortId(2);

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn fdb() -> Fdb {
        Fdb::new(FdbConfig::default(), 42)
    }

    #[test]
    fn learns_and_refreshes() {
        let mut t = fdb();
        assert_eq!(t.learn(Timestamp::ZERO, 0, mac(1), P1), Learned::New);
        assert_eq!(t.lookup(Timestamp::ZERO, 0, mac(1)), Some(P1));
        assert_eq!(
            t.learn(Timestamp::from_secs(10), 0, mac(1), P1),
            Learned::Refreshed { announce: true }
        );
        assert_eq!(
            t.learn(Timestamp::from_millis(10_500), 0, mac(1), P1),
            Learned::Refreshed { announce: false }
        );
        assert_eq!(
            t.learn(Timestamp::from_secs(11), 0, mac(1), P1),
            Learned::Refreshed { announce: true }
        );
        assert_eq!(t.lookup(Timestamp::from_secs(10), 0, mac(2)), None);
    }

    #[test]
    fn vlan_is_part_of_the_key() {
        let mut t = fdb();
        t.learn(Timestamp::ZERO, 10, mac(1), P1);
        t.learn(Timestamp::ZERO, 20, mac(1), P2);
        assert_eq!(t.lookup(Timestamp::ZERO, 10, mac(1)), Some(P1));
        assert_eq!(t.lookup(Timestamp::ZERO, 20, mac(1)), Some(P2));
        assert_eq!(t.lookup(Timestamp::ZERO, 0, mac(1)), None);
    }

    #[test]
    fn ageing_at_299_and_301_seconds() {
        let mut t = fdb();
        t.learn(Timestamp::ZERO, 0, mac(1), P1);
        assert_eq!(t.lookup(Timestamp::from_secs(299), 0, mac(1)), Some(P1));
        assert_eq!(t.lookup(Timestamp::from_secs(301), 0, mac(1)), None);
        assert_eq!(t.expire(Timestamp::from_secs(299)), 0);
        assert_eq!(t.expire(Timestamp::from_secs(301)), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn refresh_postpones_ageing() {
        let mut t = fdb();
        t.learn(Timestamp::ZERO, 0, mac(1), P1);
        t.learn(Timestamp::from_secs(200), 0, mac(1), P1);
        assert_eq!(t.lookup(Timestamp::from_secs(450), 0, mac(1)), Some(P1));
    }

    #[test]
    fn move_hysteresis() {
        let mut t = fdb();
        t.learn(Timestamp::ZERO, 0, mac(1), P1);
        let at = Timestamp::from_millis(2_999);
        assert_eq!(
            t.learn(at, 0, mac(1), P2),
            Learned::MoveRefused { owner: P1 }
        );
        assert_eq!(t.lookup(at, 0, mac(1)), Some(P1));
        let later = Timestamp::from_millis(3_000);
        assert_eq!(t.learn(later, 0, mac(1), P2), Learned::Moved { from: P1 });
        assert_eq!(t.lookup(later, 0, mac(1)), Some(P2));
    }

    #[test]
    fn a_refused_move_does_not_refresh_the_owner() {
        let mut t = fdb();
        t.learn(Timestamp::ZERO, 0, mac(1), P1);
        t.learn(Timestamp::from_secs(2), 0, mac(1), P2);
        // The owner was last seen at 0 s, so at 3 s the move is allowed.
        assert_eq!(
            t.learn(Timestamp::from_secs(3), 0, mac(1), P2),
            Learned::Moved { from: P1 }
        );
    }

    #[test]
    fn group_sources_are_not_learned() {
        let mut t = fdb();
        assert_eq!(
            t.learn(Timestamp::ZERO, 0, MacAddr::BROADCAST, P1),
            Learned::GroupSource
        );
        assert_eq!(
            t.learn(Timestamp::ZERO, 0, MacAddr([1, 0, 0x5e, 0, 0, 1]), P1),
            Learned::GroupSource
        );
        assert!(t.is_empty());
    }

    #[test]
    fn size_cap_refuses_then_reclaims_expired() {
        let config = FdbConfig {
            max_entries: 2,
            ..FdbConfig::default()
        };
        let mut t = Fdb::new(config, 1);
        t.learn(Timestamp::ZERO, 0, mac(1), P1);
        t.learn(Timestamp::ZERO, 0, mac(2), P1);
        assert_eq!(
            t.learn(Timestamp::from_secs(1), 0, mac(3), P1),
            Learned::TableFull
        );
        assert_eq!(t.len(), 2);
        // Known entries still refresh while full.
        assert_eq!(
            t.learn(Timestamp::from_secs(100), 0, mac(2), P1),
            Learned::Refreshed { announce: true }
        );
        // Once mac(1) has aged out, a new entry can take its place.
        assert_eq!(
            t.learn(Timestamp::from_secs(301), 0, mac(3), P2),
            Learned::New
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(Timestamp::from_secs(301), 0, mac(3)), Some(P2));
        assert_eq!(t.lookup(Timestamp::from_secs(301), 0, mac(2)), Some(P1));
    }

    #[test]
    fn remote_learning_skips_hysteresis_but_keeps_the_cap() {
        let config = FdbConfig {
            max_entries: 1,
            ..FdbConfig::default()
        };
        let mut t = Fdb::new(config, 3);
        assert!(t.learn_remote(Timestamp::ZERO, 0, mac(1), P1));
        // Moves at once: the replica that saw the frame decided.
        assert!(t.learn_remote(Timestamp::from_millis(10), 0, mac(1), P2));
        assert_eq!(t.lookup(Timestamp::from_millis(10), 0, mac(1)), Some(P2));
        assert!(!t.learn_remote(Timestamp::from_millis(20), 0, mac(2), P2));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn flush_port_removes_only_that_port() {
        let mut t = fdb();
        t.learn(Timestamp::ZERO, 0, mac(1), P1);
        t.learn(Timestamp::ZERO, 0, mac(2), P2);
        t.learn(Timestamp::ZERO, 7, mac(3), P1);
        assert_eq!(t.flush_port(P1), 2);
        assert_eq!(t.lookup(Timestamp::ZERO, 0, mac(2)), Some(P2));
        assert_eq!(t.len(), 1);
    }

    proptest! {
        #[test]
        fn the_cap_always_holds(cap in 1usize..64, macs in proptest::collection::vec(any::<[u8; 6]>(), 0..400)) {
            let mut t = Fdb::new(FdbConfig { max_entries: cap, ..FdbConfig::default() }, 7);
            for (i, m) in macs.into_iter().enumerate() {
                t.learn(Timestamp::from_millis(i as u64 * 10), 0, MacAddr(m), PortId((i % 5) as u32));
                prop_assert!(t.len() <= cap);
            }
        }

        #[test]
        fn group_sources_never_learned(macs in proptest::collection::vec(any::<[u8; 6]>(), 1..100)) {
            let mut t = fdb();
            for m in macs {
                let mut m = MacAddr(m);
                m.0[0] |= 1;
                t.learn(Timestamp::ZERO, 0, m, P1);
            }
            prop_assert!(t.is_empty());
        }

        #[test]
        fn lookup_matches_a_simple_model(
            events in proptest::collection::vec((0u8..6, 0u32..4, 0u64..2_000), 1..200)
        ) {
            // A reference model: last accepted (port, time) per MAC.
            let mut t = fdb();
            let mut model: HashMap<u8, (u32, u64)> = HashMap::new();
            let mut now_ms = 0u64;
            for (m, p, dt) in events {
                now_ms += dt * 100;
                t.learn(Timestamp::from_millis(now_ms), 0, mac(m), PortId(p));
                match model.get(&m) {
                    Some(&(port, _)) if port == p => { model.insert(m, (p, now_ms)); }
                    Some(&(_, seen)) if now_ms - seen < 3_000 => {}
                    _ => { model.insert(m, (p, now_ms)); }
                }
                for (&mm, &(port, seen)) in &model {
                    let expect = (now_ms - seen < 300_000).then_some(PortId(port));
                    prop_assert_eq!(t.lookup(Timestamp::from_millis(now_ms), 0, mac(mm)), expect);
                }
            }
        }
    }
}
