//! The forwarding core: one received frame in, one [`Verdict`] out.

use crate::fdb::{Fdb, FdbConfig, Learned};
use crate::frame::{EthFrame, FrameError};
use crate::mac::MacAddr;
use crate::stats::{DropReason, PortStats};
use crate::time::Timestamp;

/// A port's number: an index below [`SwitchConfig::max_ports`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl PortId {
    /// The port number as an index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How the switch behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Ports are numbered `0..max_ports`.
    pub max_ports: u32,
    /// Hub mode: every frame floods, nothing is learned.
    pub hub: bool,
    /// The forwarding database's limits and timers.
    pub fdb: FdbConfig,
    /// Seed of the forwarding database's hash (should be random).
    pub hash_seed: u64,
    /// Record what is learned as [`Announcement`]s, for replicas of the
    /// table in other threads ([`Switch::drain_announcements`]).
    pub announce_learning: bool,
}

/// Something one replica of the forwarding table learned that the others
/// should apply with [`Switch::apply_announcement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// The VLAN the address was seen on.
    pub vlan: u16,
    /// The source address.
    pub mac: MacAddr,
    /// The port it was seen on.
    pub port: PortId,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            max_ports: 256,
            hub: false,
            fdb: FdbConfig::default(),
            hash_seed: 0x05ee_d0f0_ab1e,
            announce_learning: false,
        }
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to this one port.
    Unicast(PortId),
    /// Send it to every port but the ingress port ([`Switch::flood_targets`]).
    Flood,
    /// Send it nowhere; the reason has been counted on the ingress port.
    Drop(DropReason),
}

/// Why a port could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The number is not below the configured maximum.
    #[error("port {port} is out of range: this switch has ports 0 to {} (raise --max-ports)", max - 1)]
    PortOutOfRange { port: PortId, max: u32 },
    /// The port exists already.
    #[error("port {0} is already in use")]
    PortInUse(PortId),
    /// The port is in use by another user's client.
    #[error("port {port} is in use by {}; only its user (or root) may join it", owner.map_or("a client of unknown user".to_string(), |uid| format!("uid {uid}")))]
    PortOwned { port: PortId, owner: Option<u32> },
    /// Every port number is taken.
    #[error("all {max} ports are in use (raise --max-ports)")]
    NoFreePort { max: u32 },
}

/// Counters that belong to the switch as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Source addresses not learned because the table was full.
    pub fdb_full: u64,
    /// Learning refused because the MAC was seen too recently elsewhere.
    pub fdb_move_refused: u64,
    /// MACs that moved from one port to another.
    pub fdb_moves: u64,
}

/// The switch: ports, their counters and the forwarding database.
#[derive(Debug, Clone)]
pub struct Switch {
    config: SwitchConfig,
    fdb: Fdb,
    /// Indexed by port number; `None` for a free number.
    ports: Vec<Option<PortStats>>,
    /// The ports in use, in the order they were added: what a flood walks.
    active: Vec<PortId>,
    stats: SwitchStats,
    /// What was learned since the last drain (if announcing).
    announcements: Vec<Announcement>,
}

impl Switch {
    /// A switch with no ports.
    pub fn new(config: SwitchConfig) -> Self {
        Switch {
            fdb: Fdb::new(config.fdb.clone(), config.hash_seed),
            ports: vec![None; config.max_ports as usize],
            active: Vec::with_capacity(config.max_ports as usize),
            stats: SwitchStats::default(),
            announcements: Vec::with_capacity(if config.announce_learning { 256 } else { 0 }),
            config,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// Adds port `port` with zeroed counters.
    pub fn add_port(&mut self, port: PortId) -> Result<(), SwitchError> {
        let slot = self
            .ports
            .get_mut(port.index())
            .ok_or(SwitchError::PortOutOfRange {
                port,
                max: self.config.max_ports,
            })?;
        if slot.is_some() {
            return Err(SwitchError::PortInUse(port));
        }
        *slot = Some(PortStats::default());
        self.active.push(port);
        Ok(())
    }

    /// Removes `port`, forgets every MAC learned on it and returns its
    /// final counters (`None` if it did not exist).
    pub fn remove_port(&mut self, port: PortId) -> Option<PortStats> {
        let stats = self.ports.get_mut(port.index())?.take()?;
        self.active.retain(|&p| p != port);
        self.fdb.flush_port(port);
        Some(stats)
    }

    /// True if `port` is in use.
    pub fn has_port(&self, port: PortId) -> bool {
        matches!(self.ports.get(port.index()), Some(Some(_)))
    }

    /// The ports in use.
    pub fn ports(&self) -> &[PortId] {
        &self.active
    }

    /// Decides where a frame received on `in_port` at `now` goes, learning
    /// its source on the way and counting it on `in_port`.
    ///
    /// Runts, oversize frames and frames from a port that does not exist
    /// are dropped; a frame whose destination was learned on `in_port` is
    /// dropped (it is never reflected to its sender).
    pub fn ingress(&mut self, now: Timestamp, in_port: PortId, frame: &[u8]) -> Verdict {
        let Some(Some(stats)) = self.ports.get_mut(in_port.index()) else {
            return Verdict::Drop(DropReason::UnknownSender);
        };
        stats.record_rx(frame.len());
        let verdict = self.decide(now, in_port, frame);
        if let Verdict::Drop(reason) = verdict {
            self.record_drops(in_port, reason, 1);
        }
        verdict
    }

    fn decide(&mut self, now: Timestamp, in_port: PortId, frame: &[u8]) -> Verdict {
        let frame = match EthFrame::new_checked(frame) {
            Ok(f) => f,
            Err(FrameError::Runt { .. }) => return Verdict::Drop(DropReason::Runt),
            Err(FrameError::Oversize { .. }) => return Verdict::Drop(DropReason::Oversize),
        };
        if self.active.len() < 2 {
            return Verdict::Drop(DropReason::NoDestination);
        }
        if self.config.hub {
            return Verdict::Flood;
        }
        let vlan = frame.vlan().unwrap_or(0);
        let learned = self.fdb.learn(now, vlan, frame.src(), in_port);
        match learned {
            Learned::TableFull => self.stats.fdb_full += 1,
            Learned::MoveRefused { .. } => self.stats.fdb_move_refused += 1,
            Learned::Moved { .. } => self.stats.fdb_moves += 1,
            Learned::New | Learned::Refreshed { .. } | Learned::GroupSource => {}
        }
        if self.config.announce_learning
            && matches!(
                learned,
                Learned::New | Learned::Moved { .. } | Learned::Refreshed { announce: true }
            )
        {
            self.announcements.push(Announcement {
                vlan,
                mac: frame.src(),
                port: in_port,
            });
        }
        let dst = frame.dst();
        if dst.is_group() {
            return Verdict::Flood;
        }
        match self.fdb.lookup(now, vlan, dst) {
            Some(port) if port == in_port => Verdict::Drop(DropReason::SamePort),
            Some(port) => Verdict::Unicast(port),
            None => Verdict::Flood,
        }
    }

    /// The ports a flood from `in_port` goes to: every port in use but it.
    pub fn flood_targets(&self, in_port: PortId) -> impl Iterator<Item = PortId> + '_ {
        self.active.iter().copied().filter(move |&p| p != in_port)
    }

    /// Counts a frame of `len` bytes handed to `port`'s socket.
    pub fn record_tx(&mut self, port: PortId, len: usize) {
        if let Some(Some(stats)) = self.ports.get_mut(port.index()) {
            stats.record_tx(len);
        }
    }

    /// Counts `n` frames dropped on `port` for `reason`.
    pub fn record_drops(&mut self, port: PortId, reason: DropReason, n: u64) {
        if let Some(Some(stats)) = self.ports.get_mut(port.index()) {
            stats.record_drops(reason, n);
        }
    }

    /// The counters of `port`.
    pub fn port_stats(&self, port: PortId) -> Option<&PortStats> {
        self.ports.get(port.index())?.as_ref()
    }

    /// Counters of the switch as a whole.
    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }

    /// The forwarding database (read-only).
    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Takes what was learned since the last call (empty unless
    /// [`SwitchConfig::announce_learning`] is set).
    pub fn drain_announcements(&mut self) -> std::vec::Drain<'_, Announcement> {
        self.announcements.drain(..)
    }

    /// Applies what another replica learned. Ignored if the port is gone
    /// here (its removal is on its way to the other replica too).
    pub fn apply_announcement(&mut self, now: Timestamp, a: &Announcement) {
        if self.has_port(a.port) && !self.fdb.learn_remote(now, a.vlan, a.mac, a.port) {
            self.stats.fdb_full += 1;
        }
    }

    /// Reclaims aged-out table entries; call it every second or so.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        self.fdb.expire(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(dst: MacAddr, src: MacAddr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f
    }

    fn host(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn switch_with_ports(n: u32, hub: bool) -> Switch {
        let mut sw = Switch::new(SwitchConfig {
            hub,
            ..SwitchConfig::default()
        });
        for p in 0..n {
            sw.add_port(PortId(p)).unwrap();
        }
        sw
    }

    const T0: Timestamp = Timestamp::ZERO;

    #[test]
    fn broadcast_floods_and_unicast_follows_learning() {
        let mut sw = switch_with_ports(3, false);
        let (a, b, c) = (PortId(0), PortId(1), PortId(2));
        assert_eq!(
            sw.ingress(T0, a, &frame(MacAddr::BROADCAST, host(1))),
            Verdict::Flood
        );
        assert_eq!(sw.flood_targets(a).collect::<Vec<_>>(), vec![b, c]);
        // Unknown unicast floods.
        assert_eq!(sw.ingress(T0, b, &frame(host(3), host(2))), Verdict::Flood);
        // Learned unicast goes to one port.
        assert_eq!(
            sw.ingress(T0, c, &frame(host(1), host(3))),
            Verdict::Unicast(a)
        );
        assert_eq!(
            sw.ingress(T0, a, &frame(host(3), host(1))),
            Verdict::Unicast(c)
        );
        assert_eq!(
            sw.ingress(T0, a, &frame(host(2), host(1))),
            Verdict::Unicast(b)
        );
    }

    #[test]
    fn frames_to_the_senders_own_port_are_dropped() {
        let mut sw = switch_with_ports(2, false);
        // Addressed to itself: learned first, then found on the ingress port.
        assert_eq!(
            sw.ingress(T0, PortId(0), &frame(host(1), host(1))),
            Verdict::Drop(DropReason::SamePort)
        );
        sw.ingress(T0, PortId(0), &frame(MacAddr::BROADCAST, host(2)));
        assert_eq!(
            sw.ingress(T0, PortId(0), &frame(host(2), host(1))),
            Verdict::Drop(DropReason::SamePort)
        );
        assert_eq!(
            sw.port_stats(PortId(0))
                .unwrap()
                .drops_for(DropReason::SamePort),
            2
        );
    }

    #[test]
    fn hub_mode_floods_everything_and_learns_nothing() {
        let mut sw = switch_with_ports(3, true);
        sw.ingress(T0, PortId(0), &frame(host(2), host(1)));
        sw.ingress(T0, PortId(1), &frame(host(1), host(2)));
        assert_eq!(
            sw.ingress(T0, PortId(1), &frame(host(1), host(2))),
            Verdict::Flood
        );
        assert!(sw.fdb().is_empty());
    }

    #[test]
    fn runts_and_oversize_frames_are_dropped_and_counted() {
        let mut sw = switch_with_ports(2, false);
        let p = PortId(0);
        assert_eq!(
            sw.ingress(T0, p, &[0u8; 13]),
            Verdict::Drop(DropReason::Runt)
        );
        assert_eq!(sw.ingress(T0, p, &[]), Verdict::Drop(DropReason::Runt));
        let big = vec![0u8; crate::MAX_FRAME_LEN + 1];
        assert_eq!(sw.ingress(T0, p, &big), Verdict::Drop(DropReason::Oversize));
        let stats = sw.port_stats(p).unwrap();
        assert_eq!(stats.rx_frames, 3);
        assert_eq!(stats.drops_for(DropReason::Runt), 2);
        assert_eq!(stats.drops_for(DropReason::Oversize), 1);
        assert!(sw.fdb().is_empty());
    }

    #[test]
    fn unknown_ports_and_lonely_ports() {
        let mut sw = switch_with_ports(1, false);
        let f = frame(MacAddr::BROADCAST, host(1));
        assert_eq!(
            sw.ingress(T0, PortId(9), &f),
            Verdict::Drop(DropReason::UnknownSender)
        );
        assert_eq!(
            sw.ingress(T0, PortId(0), &f),
            Verdict::Drop(DropReason::NoDestination)
        );
    }

    #[test]
    fn removing_a_port_flushes_its_macs() {
        let mut sw = switch_with_ports(3, false);
        sw.ingress(T0, PortId(1), &frame(MacAddr::BROADCAST, host(2)));
        assert_eq!(
            sw.ingress(T0, PortId(0), &frame(host(2), host(1))),
            Verdict::Unicast(PortId(1))
        );
        assert!(sw.remove_port(PortId(1)).is_some());
        assert!(sw.remove_port(PortId(1)).is_none());
        assert_eq!(
            sw.ingress(T0, PortId(0), &frame(host(2), host(1))),
            Verdict::Flood
        );
        assert_eq!(
            sw.flood_targets(PortId(0)).collect::<Vec<_>>(),
            vec![PortId(2)]
        );
        // The number is free again.
        sw.add_port(PortId(1)).unwrap();
        assert_eq!(sw.port_stats(PortId(1)).unwrap().rx_frames, 0);
    }

    #[test]
    fn port_numbers_are_bounded_and_unique() {
        let mut sw = Switch::new(SwitchConfig {
            max_ports: 2,
            ..SwitchConfig::default()
        });
        sw.add_port(PortId(0)).unwrap();
        assert_eq!(
            sw.add_port(PortId(0)),
            Err(SwitchError::PortInUse(PortId(0)))
        );
        assert_eq!(
            sw.add_port(PortId(2)),
            Err(SwitchError::PortOutOfRange {
                port: PortId(2),
                max: 2
            })
        );
        sw.add_port(PortId(1)).unwrap();
    }

    #[test]
    fn a_mac_moves_only_after_min_persistence() {
        let mut sw = switch_with_ports(3, false);
        sw.ingress(T0, PortId(0), &frame(MacAddr::BROADCAST, host(1)));
        sw.ingress(
            Timestamp::from_secs(1),
            PortId(1),
            &frame(MacAddr::BROADCAST, host(1)),
        );
        assert_eq!(
            sw.ingress(Timestamp::from_secs(1), PortId(2), &frame(host(1), host(3))),
            Verdict::Unicast(PortId(0))
        );
        assert_eq!(sw.stats().fdb_move_refused, 1);
        sw.ingress(
            Timestamp::from_secs(4),
            PortId(1),
            &frame(MacAddr::BROADCAST, host(1)),
        );
        assert_eq!(
            sw.ingress(Timestamp::from_secs(4), PortId(2), &frame(host(1), host(3))),
            Verdict::Unicast(PortId(1))
        );
    }

    #[test]
    fn replicas_converge_through_announcements() {
        let config = SwitchConfig {
            announce_learning: true,
            ..SwitchConfig::default()
        };
        let mut left = Switch::new(config.clone());
        let mut right = Switch::new(config);
        for p in 0..3 {
            left.add_port(PortId(p)).unwrap();
            right.add_port(PortId(p)).unwrap();
        }
        // host(1) speaks on port 0, which `left` serves.
        left.ingress(T0, PortId(0), &frame(MacAddr::BROADCAST, host(1)));
        let news: Vec<_> = left.drain_announcements().collect();
        assert_eq!(
            news,
            vec![Announcement {
                vlan: 0,
                mac: host(1),
                port: PortId(0)
            }]
        );
        for a in &news {
            right.apply_announcement(T0, a);
        }
        // `right` now sends frames for host(1) to port 0 only.
        assert_eq!(
            right.ingress(T0, PortId(2), &frame(host(1), host(3))),
            Verdict::Unicast(PortId(0))
        );
        // Refreshes are announced at most once a second; group sources never.
        left.ingress(
            Timestamp::from_millis(500),
            PortId(0),
            &frame(MacAddr::BROADCAST, host(1)),
        );
        assert_eq!(left.drain_announcements().count(), 0);
        left.ingress(
            Timestamp::from_secs(2),
            PortId(0),
            &frame(MacAddr::BROADCAST, host(1)),
        );
        assert_eq!(left.drain_announcements().count(), 1);
        left.ingress(T0, PortId(0), &frame(host(1), MacAddr::BROADCAST));
        assert_eq!(left.drain_announcements().count(), 0);
        // Announcements about a port that is gone are ignored.
        right.remove_port(PortId(1));
        right.apply_announcement(
            T0,
            &Announcement {
                vlan: 0,
                mac: host(9),
                port: PortId(1),
            },
        );
        assert_eq!(
            right.ingress(T0, PortId(2), &frame(host(9), host(3))),
            Verdict::Flood
        );
    }

    #[test]
    fn announcements_are_off_by_default() {
        let mut sw = switch_with_ports(2, false);
        sw.ingress(T0, PortId(0), &frame(MacAddr::BROADCAST, host(1)));
        assert_eq!(sw.drain_announcements().count(), 0);
    }

    #[test]
    fn learned_entries_age_out() {
        let mut sw = switch_with_ports(2, false);
        sw.ingress(T0, PortId(1), &frame(MacAddr::BROADCAST, host(2)));
        let f = frame(host(2), host(1));
        assert_eq!(
            sw.ingress(Timestamp::from_secs(299), PortId(0), &f),
            Verdict::Unicast(PortId(1))
        );
        assert_eq!(
            sw.ingress(Timestamp::from_secs(301), PortId(0), &f),
            Verdict::Flood
        );
    }

    #[test]
    fn tagged_frames_learn_per_vlan() {
        let mut sw = switch_with_ports(3, false);
        let mut tagged = frame(MacAddr::BROADCAST, host(1));
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        sw.ingress(T0, PortId(0), &tagged);
        // Same MAC, untagged (VLAN 0): unknown there.
        assert_eq!(
            sw.ingress(T0, PortId(1), &frame(host(1), host(2))),
            Verdict::Flood
        );
        let mut to_host1 = frame(host(1), host(2));
        to_host1.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        assert_eq!(
            sw.ingress(T0, PortId(1), &to_host1),
            Verdict::Unicast(PortId(0))
        );
    }

    proptest! {
        /// Whatever arrives, a frame never goes back to its ingress port and
        /// a group source is never learned.
        #[test]
        fn floods_never_return_and_unicast_never_reflects(
            frames in proptest::collection::vec((0u32..6, any::<[u8; 6]>(), any::<[u8; 6]>(), 0u64..5_000), 1..300),
            hub in any::<bool>(),
        ) {
            let mut sw = switch_with_ports(6, hub);
            let mut now = 0u64;
            for (port, dst, src, dt) in frames {
                now += dt;
                let in_port = PortId(port);
                let f = frame(MacAddr(dst), MacAddr(src));
                match sw.ingress(Timestamp::from_millis(now), in_port, &f) {
                    Verdict::Unicast(p) => {
                        prop_assert_ne!(p, in_port);
                        prop_assert!(sw.has_port(p));
                    }
                    Verdict::Flood => {
                        prop_assert!(sw.flood_targets(in_port).all(|p| p != in_port));
                        prop_assert_eq!(sw.flood_targets(in_port).count(), 5);
                    }
                    Verdict::Drop(r) => prop_assert_eq!(r, DropReason::SamePort),
                }
                let now_ts = Timestamp::from_millis(now);
                prop_assert!(sw.fdb().entries(now_ts).all(|(_, mac, _, _)| !mac.is_group()));
                if hub {
                    prop_assert!(sw.fdb().is_empty());
                }
            }
        }
    }
}
