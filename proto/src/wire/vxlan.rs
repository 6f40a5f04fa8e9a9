//! The VXLAN header (RFC 7348; `PROTOCOLS.md` §5).
//!
//! A VXLAN datagram is UDP (destination port [`VXLAN_PORT`]) carrying an
//! 8-byte header and then the inner Ethernet frame without FCS:
//!
//! ```text
//! byte 0      flags: 0x08 (I, "VNI valid"); other bits reserved
//! bytes 1..4  reserved
//! bytes 4..7  VNI, 24 bits big-endian
//! byte 7      reserved
//! ```
//!
//! ```
//! use uml_switch_proto::wire::vxlan;
//!
//! let mut datagram = vxlan::encode_header(42).to_vec();
//! datagram.extend_from_slice(&[0xff; 14]);
//! let (vni, inner) = vxlan::decode(&datagram).unwrap();
//! assert_eq!((vni, inner.len()), (42, 14));
//! ```

/// The IANA UDP port for VXLAN.
pub const VXLAN_PORT: u16 = 4789;

/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;

/// The I flag: the VNI field is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;

/// One more than the largest VNI (VNIs are 24 bits).
pub const VNI_LIMIT: u32 = 1 << 24;

/// A datagram that is not a valid VXLAN packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// Shorter than the 8-byte header.
    #[error("VXLAN datagram of {len} bytes is shorter than the {VXLAN_HEADER_LEN}-byte header")]
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// The I flag (0x08) is clear, so the VNI is not valid.
    #[error(
        "VXLAN flags {flags:#04x} lack the I bit (0x08, \"VNI valid\"): \
         the sender is not speaking RFC 7348 VXLAN"
    )]
    NoVniFlag {
        /// The flags byte received.
        flags: u8,
    },
}

/// The header for `vni`: flags 0x08, the VNI big-endian in bytes 4..7,
/// every reserved byte 0.
///
/// # Panics
///
/// If `vni` does not fit in 24 bits.
pub fn encode_header(vni: u32) -> [u8; VXLAN_HEADER_LEN] {
    assert!(vni < VNI_LIMIT, "VXLAN VNI {vni} does not fit in 24 bits");
    let v = vni.to_be_bytes();
    [VXLAN_FLAG_VNI, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// Splits a VXLAN datagram (the UDP payload) into its VNI and the inner
/// Ethernet frame.
///
/// As RFC 7348 requires, reserved bits and bytes are ignored; only the I
/// flag must be set. (vdeplug4 is stricter and wants flags exactly 0x08;
/// compare the flags byte yourself if that matters.) The inner frame is not
/// validated.
pub fn decode(datagram: &[u8]) -> Result<(u32, &[u8]), VxlanError> {
    if datagram.len() < VXLAN_HEADER_LEN {
        return Err(VxlanError::TooShort {
            len: datagram.len(),
        });
    }
    let flags = datagram[0];
    if flags & VXLAN_FLAG_VNI == 0 {
        return Err(VxlanError::NoVniFlag { flags });
    }
    let vni = u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]);
    Ok((vni, &datagram[VXLAN_HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout() {
        assert_eq!(
            encode_header(0x12_3456),
            [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]
        );
        assert_eq!(encode_header(1), [0x08, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(
            encode_header(VNI_LIMIT - 1),
            [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]
        );
    }

    #[test]
    #[should_panic(expected = "does not fit in 24 bits")]
    fn vni_must_fit_in_24_bits() {
        encode_header(VNI_LIMIT);
    }

    #[test]
    fn rejects_short_datagrams() {
        assert_eq!(decode(&[0x08; 7]), Err(VxlanError::TooShort { len: 7 }));
        assert_eq!(decode(&[]), Err(VxlanError::TooShort { len: 0 }));
    }

    #[test]
    fn header_alone_is_an_empty_frame() {
        assert_eq!(decode(&encode_header(5)), Ok((5, &[][..])));
    }

    #[test]
    fn requires_the_i_flag() {
        let mut d = encode_header(7).to_vec();
        d[0] = 0xf7;
        assert_eq!(decode(&d), Err(VxlanError::NoVniFlag { flags: 0xf7 }));
    }

    #[test]
    fn ignores_reserved_bits_and_bytes() {
        let d = [0xff, 0xaa, 0xbb, 0xcc, 0, 0, 9, 0xdd, 1, 2];
        assert_eq!(decode(&d), Ok((9, &[1, 2][..])));
    }

    proptest! {
        #[test]
        fn round_trip(vni in 0..VNI_LIMIT, inner in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut d = encode_header(vni).to_vec();
            d.extend_from_slice(&inner);
            prop_assert_eq!(decode(&d), Ok((vni, &inner[..])));
        }

        #[test]
        fn decode_never_panics(d in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = decode(&d);
        }
    }
}
