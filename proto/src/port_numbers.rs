//! Which port numbers are taken, and which one a new client gets.

use crate::switch::{PortId, SwitchError};

/// The port numbers `0..max` and which are in use. As in vde_switch,
/// automatic numbering starts at 1: port 0 goes only to a client that asks
/// for it by number.
#[derive(Debug, Clone)]
pub struct PortNumbers {
    used: Vec<bool>,
}

impl PortNumbers {
    /// `max` numbers, all free.
    pub fn new(max: u32) -> Self {
        PortNumbers {
            used: vec![false; max as usize],
        }
    }

    /// Takes `wanted`, or the lowest free number from 1 when `None`.
    pub fn claim(&mut self, wanted: Option<PortId>) -> Result<PortId, SwitchError> {
        let max = self.used.len() as u32;
        let port = match wanted {
            Some(port) => port,
            None => (1..self.used.len())
                .find(|&i| !self.used[i])
                .map(|i| PortId(i as u32))
                .ok_or(SwitchError::NoFreePort { max })?,
        };
        match self.used.get_mut(port.index()) {
            None => Err(SwitchError::PortOutOfRange { port, max }),
            Some(true) => Err(SwitchError::PortInUse(port)),
            Some(used) => {
                *used = true;
                Ok(port)
            }
        }
    }

    /// Frees `port` (nothing happens if it was free).
    pub fn release(&mut self, port: PortId) {
        if let Some(used) = self.used.get_mut(port.index()) {
            *used = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_numbers_start_at_one_and_are_reused() {
        let mut n = PortNumbers::new(3);
        assert_eq!(n.claim(None), Ok(PortId(1)));
        assert_eq!(n.claim(None), Ok(PortId(2)));
        assert_eq!(n.claim(None), Err(SwitchError::NoFreePort { max: 3 }));
        assert_eq!(n.claim(Some(PortId(0))), Ok(PortId(0)));
        n.release(PortId(1));
        assert_eq!(n.claim(None), Ok(PortId(1)));
    }

    #[test]
    fn explicit_numbers_are_checked() {
        let mut n = PortNumbers::new(4);
        assert_eq!(n.claim(Some(PortId(3))), Ok(PortId(3)));
        assert_eq!(
            n.claim(Some(PortId(3))),
            Err(SwitchError::PortInUse(PortId(3)))
        );
        assert_eq!(
            n.claim(Some(PortId(4))),
            Err(SwitchError::PortOutOfRange {
                port: PortId(4),
                max: 4
            })
        );
        n.release(PortId(9)); // out of range: ignored
    }
}
