//! Which port numbers are taken, by whom, and which one a new client gets.

use crate::switch::{PortId, SwitchError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PortUse {
    /// The uid of the client that took the port, if known.
    user: Option<u32>,
    /// Clients (endpoints) on the port.
    endpoints: u32,
}

/// The port numbers `0..max`, and who uses each. As in vde_switch,
/// automatic numbering starts at 1 (port 0 goes only to a client that asks
/// for it), and a client that asks for a port in use joins it, if the port
/// belongs to the same user (or the client is root): the clients of one
/// port hear the rest of the switch, not each other.
#[derive(Debug, Clone)]
pub struct PortNumbers {
    used: Vec<Option<PortUse>>,
}

impl PortNumbers {
    /// `max` numbers, all free.
    pub fn new(max: u32) -> Self {
        PortNumbers {
            used: vec![None; max as usize],
        }
    }

    /// Takes `wanted`, or the lowest free number from 1 when `None`, for a
    /// client of uid `user`.
    pub fn claim(
        &mut self,
        wanted: Option<PortId>,
        user: Option<u32>,
    ) -> Result<PortId, SwitchError> {
        let max = self.used.len() as u32;
        let port = match wanted {
            Some(port) => port,
            None => (1..self.used.len())
                .find(|&i| self.used[i].is_none())
                .map(|i| PortId(i as u32))
                .ok_or(SwitchError::NoFreePort { max })?,
        };
        let slot = self
            .used
            .get_mut(port.index())
            .ok_or(SwitchError::PortOutOfRange { port, max })?;
        match slot {
            None => {
                *slot = Some(PortUse { user, endpoints: 1 });
                Ok(port)
            }
            Some(taken) => match (taken.user, user) {
                (Some(owner), Some(uid)) if owner == uid || uid == 0 => {
                    taken.endpoints += 1;
                    Ok(port)
                }
                (owner, _) => Err(SwitchError::PortOwned { port, owner }),
            },
        }
    }

    /// Gives back one client's claim on `port`; the number is free when
    /// its last client is gone.
    pub fn release(&mut self, port: PortId) {
        if let Some(slot) = self.used.get_mut(port.index()) {
            if let Some(taken) = slot {
                taken.endpoints -= 1;
                if taken.endpoints == 0 {
                    *slot = None;
                }
            }
        }
    }

    /// How many clients share `port` (0 when free).
    pub fn clients(&self, port: PortId) -> u32 {
        self.used
            .get(port.index())
            .and_then(|slot| slot.map(|taken| taken.endpoints))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_numbers_start_at_one_and_are_reused() {
        let mut n = PortNumbers::new(3);
        assert_eq!(n.claim(None, Some(1000)), Ok(PortId(1)));
        assert_eq!(n.claim(None, Some(1000)), Ok(PortId(2)));
        assert_eq!(n.claim(None, None), Err(SwitchError::NoFreePort { max: 3 }));
        assert_eq!(n.claim(Some(PortId(0)), None), Ok(PortId(0)));
        n.release(PortId(1));
        assert_eq!(n.claim(None, None), Ok(PortId(1)));
    }

    #[test]
    fn explicit_numbers_are_checked() {
        let mut n = PortNumbers::new(4);
        assert_eq!(
            n.claim(Some(PortId(4)), Some(1)),
            Err(SwitchError::PortOutOfRange {
                port: PortId(4),
                max: 4
            })
        );
        n.release(PortId(9)); // out of range: ignored
        n.release(PortId(2)); // free: ignored
        assert_eq!(n.clients(PortId(2)), 0);
    }

    #[test]
    fn a_port_is_shared_by_its_user_and_root_only() {
        let mut n = PortNumbers::new(8);
        assert_eq!(n.claim(Some(PortId(5)), Some(1000)), Ok(PortId(5)));
        assert_eq!(n.claim(Some(PortId(5)), Some(1000)), Ok(PortId(5)));
        assert_eq!(n.claim(Some(PortId(5)), Some(0)), Ok(PortId(5)));
        assert_eq!(n.clients(PortId(5)), 3);
        assert_eq!(
            n.claim(Some(PortId(5)), Some(1001)),
            Err(SwitchError::PortOwned {
                port: PortId(5),
                owner: Some(1000)
            })
        );
        assert_eq!(
            n.claim(Some(PortId(5)), None),
            Err(SwitchError::PortOwned {
                port: PortId(5),
                owner: Some(1000)
            })
        );
        // Automatic numbering never joins a port.
        assert_eq!(n.claim(None, Some(1000)), Ok(PortId(1)));
        for _ in 0..3 {
            n.release(PortId(5));
        }
        assert_eq!(n.claim(Some(PortId(5)), Some(1001)), Ok(PortId(5)));
    }

    #[test]
    fn ports_of_unknown_users_are_not_shared() {
        let mut n = PortNumbers::new(4);
        assert_eq!(n.claim(Some(PortId(3)), None), Ok(PortId(3)));
        assert_eq!(
            n.claim(Some(PortId(3)), Some(0)),
            Err(SwitchError::PortOwned {
                port: PortId(3),
                owner: None
            })
        );
    }
}
