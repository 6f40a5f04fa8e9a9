//! A validated, zero-copy view of an Ethernet frame.
//!
//! Frames arrive as they do on the daemon transport: destination, source,
//! ethertype, payload; no preamble, no FCS, no padding guaranteed.
//! [`EthFrame::new_checked`] is the one validation point; after it no
//! accessor can panic.

use crate::mac::MacAddr;

/// The shortest frame the switch accepts: two addresses and an ethertype.
pub const MIN_FRAME_LEN: usize = 14;

/// The longest frame the switch accepts: a 9216-byte jumbo payload plus an
/// 18-byte tagged header, the same limit as vdeplug4's `vde_plug`. It lets
/// every standard 1514-byte frame and 1518-byte 802.1Q-tagged frame pass.
/// Longer datagrams are dropped and counted, never truncated.
pub const MAX_FRAME_LEN: usize = 9234;

/// The 802.1Q tag protocol identifier.
pub const ETHERTYPE_VLAN: u16 = 0x8100;

mod field {
    use std::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const VLAN_TCI: Range<usize> = 14..16;
    pub const INNER_ETHERTYPE: Range<usize> = 16..18;
}

/// Why a buffer is not an acceptable frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than [`MIN_FRAME_LEN`], or an 802.1Q tag cut short.
    #[error("runt frame: {len} bytes, the minimum is {min}")]
    Runt { len: usize, min: usize },
    /// Longer than [`MAX_FRAME_LEN`].
    #[error("oversize frame: {len} bytes, the maximum is {max}")]
    Oversize { len: usize, max: usize },
}

/// A view of an Ethernet frame over any byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct EthFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthFrame<T> {
    /// Checks the length (and a tagged frame's tag) and wraps `buf`.
    pub fn new_checked(buf: T) -> Result<Self, FrameError> {
        let len = buf.as_ref().len();
        if len < MIN_FRAME_LEN {
            return Err(FrameError::Runt {
                len,
                min: MIN_FRAME_LEN,
            });
        }
        if len > MAX_FRAME_LEN {
            return Err(FrameError::Oversize {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        let frame = EthFrame { buf };
        if frame.outer_ethertype() == ETHERTYPE_VLAN && len < field::INNER_ETHERTYPE.end {
            return Err(FrameError::Runt {
                len,
                min: field::INNER_ETHERTYPE.end,
            });
        }
        Ok(frame)
    }

    fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    fn mac_at(&self, range: std::ops::Range<usize>) -> MacAddr {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.bytes()[range]);
        MacAddr(mac)
    }

    fn u16_at(&self, range: std::ops::Range<usize>) -> u16 {
        let b = &self.bytes()[range];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn outer_ethertype(&self) -> u16 {
        self.u16_at(field::ETHERTYPE)
    }

    /// The destination address.
    pub fn dst(&self) -> MacAddr {
        self.mac_at(field::DESTINATION)
    }

    /// The source address.
    pub fn src(&self) -> MacAddr {
        self.mac_at(field::SOURCE)
    }

    /// The 12-bit VLAN id of an 802.1Q-tagged frame, `None` if untagged.
    pub fn vlan(&self) -> Option<u16> {
        (self.outer_ethertype() == ETHERTYPE_VLAN).then(|| self.u16_at(field::VLAN_TCI) & 0x0fff)
    }

    /// The ethertype of the payload (after the 802.1Q tag, if any).
    pub fn ethertype(&self) -> u16 {
        if self.vlan().is_some() {
            self.u16_at(field::INNER_ETHERTYPE)
        } else {
            self.outer_ethertype()
        }
    }

    /// The whole frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Always false: a checked frame holds at least [`MIN_FRAME_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f
    }

    #[test]
    fn untagged_fields() {
        let buf = frame(0x0806, 42);
        let f = EthFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.dst(), MacAddr::BROADCAST);
        assert_eq!(f.src(), MacAddr([2, 0, 0, 0, 0, 7]));
        assert_eq!(f.ethertype(), 0x0806);
        assert_eq!(f.vlan(), None);
        assert_eq!(f.len(), 42);
    }

    #[test]
    fn tagged_fields() {
        let mut buf = frame(ETHERTYPE_VLAN, 64);
        buf[14..16].copy_from_slice(&0xe00au16.to_be_bytes()); // PCP 7, VID 10
        buf[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
        let f = EthFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.vlan(), Some(10));
        assert_eq!(f.ethertype(), 0x0800);
    }

    #[test]
    fn length_limits() {
        assert_eq!(
            EthFrame::new_checked(&frame(0x0800, 14)[..13]).unwrap_err(),
            FrameError::Runt { len: 13, min: 14 }
        );
        assert!(EthFrame::new_checked(&[][..]).is_err());
        assert!(EthFrame::new_checked(&frame(0x0800, 14)[..]).is_ok());
        assert!(EthFrame::new_checked(&frame(0x0800, 1518)[..]).is_ok());
        assert!(EthFrame::new_checked(&frame(0x0800, MAX_FRAME_LEN)[..]).is_ok());
        assert_eq!(
            EthFrame::new_checked(&frame(0x0800, MAX_FRAME_LEN + 1)[..]).unwrap_err(),
            FrameError::Oversize {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            }
        );
        // A tag that is cut short.
        assert!(EthFrame::new_checked(&frame(ETHERTYPE_VLAN, 16)[..]).is_err());
        assert!(EthFrame::new_checked(&frame(ETHERTYPE_VLAN, 18)[..]).is_ok());
    }

    #[test]
    fn agrees_with_etherparse_style_offsets() {
        // dst, src and type straight from the byte layout.
        let buf: Vec<u8> = (0u8..60).collect();
        let f = EthFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(f.dst().0, [0, 1, 2, 3, 4, 5]);
        assert_eq!(f.src().0, [6, 7, 8, 9, 10, 11]);
        assert_eq!(f.ethertype(), 0x0c0d);
    }
}
