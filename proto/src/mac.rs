//! Ethernet (MAC) addresses.

use std::fmt;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for group addresses (multicast and broadcast): the I/G bit, the
    /// lowest bit of the first octet. A frame never comes *from* such an
    /// address, so the switch never learns one.
    pub const fn is_group(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for locally administered addresses (the U/L bit).
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// True for the broadcast address.
    pub const fn is_broadcast(&self) -> bool {
        let o = self.0;
        o[0] & o[1] & o[2] & o[3] & o[4] & o[5] == 0xff
    }

    /// The address as the low 48 bits of a `u64`, for compact keys.
    pub const fn to_u64(&self) -> u64 {
        let o = self.0;
        (o[0] as u64) << 40
            | (o[1] as u64) << 32
            | (o[2] as u64) << 24
            | (o[3] as u64) << 16
            | (o[4] as u64) << 8
            | o[5] as u64
    }

    /// The inverse of [`MacAddr::to_u64`] (the high 16 bits are ignored).
    pub const fn from_u64(v: u64) -> Self {
        MacAddr([
            (v >> 40) as u8,
            (v >> 32) as u8,
            (v >> 24) as u8,
            (v >> 16) as u8,
            (v >> 8) as u8,
            v as u8,
        ])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text is not six colon-separated hexadecimal octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (expected six hex octets such as 02:00:0a:09:00:01)")]
pub struct ParseMacError(String);

impl std::str::FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for octet in out.iter_mut() {
            let part = parts.next().ok_or_else(|| ParseMacError(s.into()))?;
            if part.is_empty() || part.len() > 2 {
                return Err(ParseMacError(s.into()));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.into()));
        }
        Ok(MacAddr(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_and_local_bits() {
        assert!(MacAddr::BROADCAST.is_group());
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_group());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 1]).is_group());
        assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_local());
        assert!(!MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_broadcast());
    }

    #[test]
    fn u64_round_trip_and_display() {
        let m: MacAddr = "02:00:0a:09:00:01".parse().unwrap();
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert_eq!(m.to_string(), "02:00:0a:09:00:01");
        assert!("02:00:0a:09:00".parse::<MacAddr>().is_err());
        assert!("02:00:0a:09:00:01:02".parse::<MacAddr>().is_err());
        assert!("zz:00:0a:09:00:01".parse::<MacAddr>().is_err());
    }
}
