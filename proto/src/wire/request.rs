//! The connection request of the daemon protocol, version 3
//! (`struct request_v3` in Linux's `arch/um/drivers/daemon_user.c`, and
//! vde2's datasock module).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0xfeedface`, host order |
//! | 4 | 4 | version, 3 |
//! | 8 | 4 | type: bits 0..8 the request (0 new control, 1 new port 0), bits 8..32 the port asked for (0: any) |
//! | 12 | 110 | the client's data-socket `sockaddr_un` |
//! | 122 | .. | libvdeplug: a description, no length, no NUL; UML: 2 padding bytes |

use super::sockaddr::{SockaddrUn, AF_UNIX, SOCKADDR_UN_LEN};

/// `0xfeedface`.
pub const REQUEST_MAGIC: u32 = 0xfeed_face;
/// The protocol version the switch speaks.
pub const REQUEST_VERSION: u32 = 3;
/// Magic, version, type and address: the shortest valid request.
pub const REQUEST_HEADER_LEN: usize = 12 + SOCKADDR_UN_LEN;
/// What UML writes: the C struct with its 2 bytes of trailing padding.
pub const UML_REQUEST_LEN: usize = REQUEST_HEADER_LEN + 2;
/// The longest request the switch reads (vde_switch reads at most 256).
pub const MAX_REQUEST_LEN: usize = 256;

const REQ_NEW_CONTROL: u8 = 0;
const REQ_NEW_PORT0: u8 = 1;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A data port (`REQ_NEW_CONTROL`).
    NewControl,
    /// Port 0, vde_switch's management port (`REQ_NEW_PORT0`).
    NewPort0,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked for.
    pub kind: RequestKind,
    /// The port number asked for; 0 means "the first free one".
    pub port: u32,
    /// Where the client receives frames, as it sent it.
    pub client: SockaddrUn,
    /// The free text after the address, up to the first NUL, with
    /// anything that is not printable replaced (UML's padding gives "").
    pub description: String,
}

/// Why bytes are not an acceptable request. Each variant carries what was
/// found so that the log says what the client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Fewer than [`REQUEST_HEADER_LEN`] bytes.
    #[error("request too short: {len} bytes, a version 3 request has at least {min}")]
    Short { len: usize, min: usize },
    /// More than [`MAX_REQUEST_LEN`] bytes.
    #[error("request too long: {len} bytes, at most {max} are accepted")]
    TooLong { len: usize, max: usize },
    /// The first four bytes are not `0xfeedface`.
    #[error("bad magic {found:#010x} (expected 0xfeedface): not a UML/vde client, or a version 0 client, which is not supported")]
    BadMagic { found: u32 },
    /// A version other than 3.
    #[error("unsupported protocol version {version} (only version 3 is spoken)")]
    UnsupportedVersion { version: u32 },
    /// A request type other than new-control or new-port-0.
    #[error("unknown request type {found} in type field {raw:#010x}")]
    UnknownType { found: u8, raw: u32 },
    /// The address family is not `AF_UNIX`.
    #[error("client address family is {family}, expected AF_UNIX ({AF_UNIX})")]
    BadFamily { family: u16 },
}

fn u32_at(buf: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes([
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ])
}

impl Request {
    /// A request for a data port, the first free one when `port` is 0.
    pub fn new(client: SockaddrUn, port: u32, description: &str) -> Self {
        Request {
            kind: RequestKind::NewControl,
            port,
            client,
            description: description.to_owned(),
        }
    }

    /// Decodes a request from every byte a client sent before waiting for
    /// the reply.
    pub fn decode(buf: &[u8]) -> Result<Request, RequestError> {
        // Check what is there before complaining about the length, so that
        // a short write of garbage is reported as garbage.
        if buf.len() >= 4 && u32_at(buf, 0) != REQUEST_MAGIC {
            return Err(RequestError::BadMagic {
                found: u32_at(buf, 0),
            });
        }
        if buf.len() >= 8 && u32_at(buf, 4) != REQUEST_VERSION {
            return Err(RequestError::UnsupportedVersion {
                version: u32_at(buf, 4),
            });
        }
        if buf.len() < REQUEST_HEADER_LEN {
            return Err(RequestError::Short {
                len: buf.len(),
                min: REQUEST_HEADER_LEN,
            });
        }
        if buf.len() > MAX_REQUEST_LEN {
            return Err(RequestError::TooLong {
                len: buf.len(),
                max: MAX_REQUEST_LEN,
            });
        }
        let raw_type = u32_at(buf, 8);
        let kind = match raw_type as u8 {
            REQ_NEW_CONTROL => RequestKind::NewControl,
            REQ_NEW_PORT0 => RequestKind::NewPort0,
            found => {
                return Err(RequestError::UnknownType {
                    found,
                    raw: raw_type,
                })
            }
        };
        let mut addr = [0u8; SOCKADDR_UN_LEN];
        addr.copy_from_slice(&buf[12..REQUEST_HEADER_LEN]);
        let client = SockaddrUn::from_bytes(addr);
        if client.family() != AF_UNIX {
            return Err(RequestError::BadFamily {
                family: client.family(),
            });
        }
        let tail = &buf[REQUEST_HEADER_LEN..];
        let text = &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())];
        let description = String::from_utf8_lossy(text)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        Ok(Request {
            kind,
            port: match kind {
                RequestKind::NewControl => raw_type >> 8,
                RequestKind::NewPort0 => 0,
            },
            client,
            description,
        })
    }

    /// Encodes the request as libvdeplug does: 122 bytes, then the
    /// description without a NUL.
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            RequestKind::NewControl => u32::from(REQ_NEW_CONTROL),
            RequestKind::NewPort0 => u32::from(REQ_NEW_PORT0),
        };
        let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + self.description.len());
        out.extend_from_slice(&REQUEST_MAGIC.to_ne_bytes());
        out.extend_from_slice(&REQUEST_VERSION.to_ne_bytes());
        out.extend_from_slice(&(kind | (self.port << 8)).to_ne_bytes());
        out.extend_from_slice(self.client.as_bytes());
        out.extend_from_slice(self.description.as_bytes());
        out
    }

    /// Encodes the request as UML does: the 124-byte C struct, padding zero
    /// (the description is not sent).
    pub fn encode_uml(&self) -> Vec<u8> {
        let mut out = self.encode();
        out.truncate(REQUEST_HEADER_LEN);
        out.resize(UML_REQUEST_LEN, 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uml_like_client() -> SockaddrUn {
        let mut name = [0x5au8; 107];
        name[..3].fill(0);
        name[3..7].copy_from_slice(&4242i32.to_ne_bytes());
        SockaddrUn::abstract_name(&name).unwrap()
    }

    #[test]
    fn uml_request_is_124_bytes_and_decodes() {
        let req = Request::new(uml_like_client(), 0, "");
        let bytes = req.encode_uml();
        assert_eq!(bytes.len(), 124);
        assert_eq!(&bytes[..4], &[0xce, 0xfa, 0xed, 0xfe]);
        assert_eq!(Request::decode(&bytes).unwrap(), req);
    }

    #[test]
    fn libvdeplug_request_with_port_and_description() {
        let client = SockaddrUn::pathname(b"/tmp/vde.ctl/.01234-00000").unwrap();
        let req = Request::new(client, 5, "vdeplug: user=root pid=1234");
        let bytes = req.encode();
        assert_eq!(bytes.len(), 122 + 27);
        assert_eq!(u32_at(&bytes, 8), 0x0000_0500);
        assert_eq!(Request::decode(&bytes).unwrap(), req);
    }

    #[test]
    fn new_port0_and_unknown_types() {
        let mut bytes = Request::new(uml_like_client(), 0, "").encode();
        bytes[8] = 1;
        assert_eq!(Request::decode(&bytes).unwrap().kind, RequestKind::NewPort0);
        bytes[8] = 7;
        assert!(matches!(
            Request::decode(&bytes),
            Err(RequestError::UnknownType { found: 7, .. })
        ));
    }

    #[test]
    fn malformed_requests_are_typed_errors() {
        let good = Request::new(uml_like_client(), 0, "").encode_uml();
        let mut bad_magic = good.clone();
        bad_magic[0] = 0;
        assert!(matches!(
            Request::decode(&bad_magic),
            Err(RequestError::BadMagic { .. })
        ));
        for version in [0u32, 1, 2, 4, 0xffff_ffff] {
            let mut v = good.clone();
            v[4..8].copy_from_slice(&version.to_ne_bytes());
            assert_eq!(
                Request::decode(&v),
                Err(RequestError::UnsupportedVersion { version })
            );
        }
        assert_eq!(
            Request::decode(&good[..121]),
            Err(RequestError::Short { len: 121, min: 122 })
        );
        assert!(matches!(
            Request::decode(&[]),
            Err(RequestError::Short { .. })
        ));
        assert!(matches!(
            Request::decode(&good[..2]),
            Err(RequestError::Short { .. })
        ));
        let mut family = good.clone();
        family[12..14].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(
            Request::decode(&family),
            Err(RequestError::BadFamily { family: 2 })
        );
        let mut long = good.clone();
        long.resize(257, b'x');
        assert!(matches!(
            Request::decode(&long),
            Err(RequestError::TooLong { len: 257, .. })
        ));
    }

    #[test]
    fn descriptions_are_cut_at_nul_and_sanitised() {
        let mut bytes = Request::new(uml_like_client(), 0, "").encode();
        bytes.extend_from_slice(b"QEMU\x1b[31m\0trailing");
        assert_eq!(Request::decode(&bytes).unwrap().description, "QEMU?[31m");
    }

    proptest! {
        #[test]
        fn round_trip(port in 0u32..(1 << 24), name in proptest::collection::vec(any::<u8>(), 107),
                      descr in "[ -~]{0,134}") {
            let req = Request::new(SockaddrUn::abstract_name(&name).unwrap(), port, &descr);
            prop_assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn any_valid_header_with_any_tail_decodes(tail in proptest::collection::vec(any::<u8>(), 0..134)) {
            let mut bytes = Request::new(uml_like_client(), 0, "").encode();
            bytes.extend_from_slice(&tail);
            let req = Request::decode(&bytes).unwrap();
            prop_assert_eq!(req.client, uml_like_client());
            prop_assert!(!req.description.chars().any(char::is_control));
        }
    }
}
