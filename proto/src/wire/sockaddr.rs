//! Linux's `struct sockaddr_un` as the 110 bytes that travel in requests and
//! replies: a host-order `u16` family (1) and a 108-byte path.
//!
//! Pathname addresses end at the first NUL. Abstract addresses start with a
//! NUL and are *all* 107 following bytes: UML leaves uninitialised memory
//! after its pid and microseconds and binds with the full length, so the
//! blob is kept whole and compared whole.

use std::fmt;

/// The size of `struct sockaddr_un` on Linux.
pub const SOCKADDR_UN_LEN: usize = 110;
/// The size of `sun_path`.
pub const SUN_PATH_LEN: usize = 108;
/// `AF_UNIX`.
pub const AF_UNIX: u16 = 1;

/// A `sockaddr_un` kept as the opaque bytes a peer sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockaddrUn([u8; SOCKADDR_UN_LEN]);

/// What kind of Unix address a [`SockaddrUn`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockaddrKind<'a> {
    /// A file system path (without the terminating NUL).
    Pathname(&'a [u8]),
    /// An abstract name: the 107 bytes after the leading NUL.
    Abstract(&'a [u8]),
}

/// A path or name that does not fit in a `sockaddr_un`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// The path, with its NUL, is longer than `sun_path`.
    #[error("socket path `{path}` is {len} bytes long; a Unix socket path may have at most {max} bytes (choose a shorter path)")]
    PathTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    /// The path holds a NUL byte.
    #[error("socket path `{0}` contains a NUL byte")]
    PathHasNul(String),
    /// The abstract name is longer than 107 bytes.
    #[error("abstract socket name is {len} bytes long; at most {max} fit")]
    NameTooLong { len: usize, max: usize },
}

impl SockaddrUn {
    /// Wraps 110 bytes as they came off the wire.
    pub const fn from_bytes(bytes: [u8; SOCKADDR_UN_LEN]) -> Self {
        SockaddrUn(bytes)
    }

    /// A pathname address, zero-padded.
    pub fn pathname(path: &[u8]) -> Result<Self, AddrError> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        if path.contains(&0) {
            return Err(AddrError::PathHasNul(shown()));
        }
        if path.len() >= SUN_PATH_LEN {
            return Err(AddrError::PathTooLong {
                path: shown(),
                len: path.len(),
                max: SUN_PATH_LEN - 1,
            });
        }
        let mut bytes = Self::empty();
        bytes[2..2 + path.len()].copy_from_slice(path);
        Ok(SockaddrUn(bytes))
    }

    /// An abstract address whose name is `name` padded with zeros to the
    /// full 107 bytes (so it must be bound and addressed with length 110).
    pub fn abstract_name(name: &[u8]) -> Result<Self, AddrError> {
        if name.len() > SUN_PATH_LEN - 1 {
            return Err(AddrError::NameTooLong {
                len: name.len(),
                max: SUN_PATH_LEN - 1,
            });
        }
        let mut bytes = Self::empty();
        bytes[3..3 + name.len()].copy_from_slice(name);
        Ok(SockaddrUn(bytes))
    }

    fn empty() -> [u8; SOCKADDR_UN_LEN] {
        let mut bytes = [0u8; SOCKADDR_UN_LEN];
        bytes[..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
        bytes
    }

    /// The address family field (host byte order).
    pub fn family(&self) -> u16 {
        u16::from_ne_bytes([self.0[0], self.0[1]])
    }

    /// The 108-byte `sun_path` field.
    pub fn sun_path(&self) -> &[u8] {
        &self.0[2..]
    }

    /// Pathname or abstract.
    pub fn kind(&self) -> SockaddrKind<'_> {
        let path = self.sun_path();
        match path.iter().position(|&b| b == 0) {
            Some(0) => SockaddrKind::Abstract(&path[1..]),
            Some(end) => SockaddrKind::Pathname(&path[..end]),
            None => SockaddrKind::Pathname(path),
        }
    }

    /// True if `received`, a source address as `recvfrom`/`recvmmsg`
    /// returned it (its first `addrlen` bytes), names this address.
    /// Pathnames compare by the length the kernel returned (it may or may
    /// not count the NUL); abstract names compare all 110 bytes.
    pub fn matches_received(&self, received: &[u8]) -> bool {
        if received.len() < 3 || received[..2] != self.0[..2] {
            return false;
        }
        match self.kind() {
            SockaddrKind::Abstract(_) => received == &self.0[..],
            SockaddrKind::Pathname(path) => {
                let got = &received[2..];
                let got = &got[..got.iter().position(|&b| b == 0).unwrap_or(got.len())];
                got == path
            }
        }
    }

    /// The raw 110 bytes.
    pub fn as_bytes(&self) -> &[u8; SOCKADDR_UN_LEN] {
        &self.0
    }
}

impl fmt::Debug for SockaddrUn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SockaddrUn {
    /// Pathnames as text; abstract names as `@` and the leading bytes in
    /// hex (UML's are its pid and microseconds, then garbage).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            SockaddrKind::Pathname(p) => write!(f, "{}", String::from_utf8_lossy(p)),
            SockaddrKind::Abstract(name) => {
                let printable = name
                    .iter()
                    .take_while(|&&b| b != 0)
                    .all(|&b| b.is_ascii_graphic());
                let text_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                if printable && text_len > 0 {
                    write!(f, "@{}", String::from_utf8_lossy(&name[..text_len]))
                } else {
                    write!(f, "@")?;
                    for b in &name[..11] {
                        write!(f, "{b:02x}")?;
                    }
                    write!(f, "…")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pathname_round_trip() {
        let a = SockaddrUn::pathname(b"/tmp/x.sock").unwrap();
        assert_eq!(a.family(), AF_UNIX);
        assert_eq!(a.kind(), SockaddrKind::Pathname(b"/tmp/x.sock"));
        assert_eq!(a.to_string(), "/tmp/x.sock");
        assert_eq!(SockaddrUn::from_bytes(*a.as_bytes()), a);
    }

    #[test]
    fn path_limits() {
        assert!(SockaddrUn::pathname(&[b'a'; 107]).is_ok());
        assert!(matches!(
            SockaddrUn::pathname(&[b'a'; 108]),
            Err(AddrError::PathTooLong {
                len: 108,
                max: 107,
                ..
            })
        ));
        assert!(SockaddrUn::pathname(b"a\0b").is_err());
        assert!(SockaddrUn::abstract_name(&[1; 108]).is_err());
    }

    #[test]
    fn received_addresses_match_by_kind() {
        let path = SockaddrUn::pathname(b"/tmp/c").unwrap();
        let mut got = AF_UNIX.to_ne_bytes().to_vec();
        got.extend_from_slice(b"/tmp/c");
        assert!(path.matches_received(&got));
        got.push(0);
        assert!(path.matches_received(&got));
        assert!(!path.matches_received(&got[..got.len() - 2]));
        assert!(!path.matches_received(&got[..2]));
        let mut name = [7u8; 107];
        name[0] = 1;
        let abs = SockaddrUn::abstract_name(&name).unwrap();
        assert!(abs.matches_received(abs.as_bytes()));
        assert!(!abs.matches_received(&abs.as_bytes()[..109]));
        let mut other = *abs.as_bytes();
        other[109] ^= 1;
        assert!(!abs.matches_received(&other));
    }

    #[test]
    fn abstract_names_keep_every_byte() {
        let mut name = [0u8; 107];
        name[3..7].copy_from_slice(&1234i32.to_ne_bytes());
        name[100] = 0xaa; // garbage after the pid, as UML leaves it
        let a = SockaddrUn::abstract_name(&name).unwrap();
        assert_eq!(a.kind(), SockaddrKind::Abstract(&name[..]));
        let mut other = name;
        other[100] = 0xab;
        assert_ne!(a, SockaddrUn::abstract_name(&other).unwrap());
        assert!(a.to_string().starts_with('@'));
        let named = SockaddrUn::abstract_name(b"uml-switch.1.2").unwrap();
        assert_eq!(named.to_string(), "@uml-switch.1.2");
    }
}
