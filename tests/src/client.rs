//! A test client speaking User-Mode-Linux's "daemon" transport (protocol
//! version 3) exactly as UML does.
//!
//! Deliberately written by hand from PROTOCOLS.md §1 rather than with the
//! `uml-switch-proto` codec, so the tests check the switch independently:
//!
//! 1. connect a stream socket to the control path;
//! 2. bind a datagram socket to an abstract address laid out like UML's
//!    (NUL, pid, microseconds, garbage; addrlen 110), or to a pathname;
//! 3. write the 124-byte request: magic `0xfeedface`, version 3, type 0
//!    (`REQ_NEW_CONTROL`), the 110-byte `sockaddr_un`, 2 pad bytes;
//! 4. read exactly 110 bytes: the switch's data-socket `sockaddr_un`;
//! 5. exchange one Ethernet frame per datagram with that address;
//! 6. close the control stream to leave.

use std::io::{self, ErrorKind, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// Request magic, written in host (little-endian) order: `ce fa ed fe`.
pub const MAGIC: u32 = 0xfeed_face;
/// The protocol version UML speaks.
pub const VERSION: u32 = 3;
/// Request type asking for a new port.
pub const REQ_NEW_CONTROL: u32 = 0;
/// `sizeof(struct sockaddr_un)` on Linux: u16 family + 108-byte path.
pub const SOCKADDR_UN_LEN: usize = 110;
/// Size of `sun_path`.
pub const SUN_PATH_LEN: usize = 108;
/// Length of an abstract name: every byte of `sun_path` after the NUL.
pub const ABSTRACT_NAME_LEN: usize = SUN_PATH_LEN - 1;
/// Size of UML's request: 12 header bytes, the sockaddr, 2 pad bytes.
pub const REQUEST_LEN: usize = 124;
/// `AF_UNIX`, as stored in `sun_family`.
pub const AF_UNIX: u16 = 1;

/// How long the handshake may take before the client gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive buffer: far above any legal frame, so oversize deliveries show.
const RECV_BUFFER_LEN: usize = 65_536;

/// The broadcast MAC address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Ethertype used by test frames (IEEE "local experimental").
pub const TEST_ETHERTYPE: u16 = 0x88b5;

/// A Unix-domain datagram address as carried in the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataAddr {
    /// Abstract address: the 107 bytes after the leading NUL, all of them
    /// significant (garbage included).
    Abstract(Box<[u8; ABSTRACT_NAME_LEN]>),
    /// Filesystem path (ends at the first NUL of `sun_path`).
    Pathname(PathBuf),
}

impl DataAddr {
    /// The 110-byte `sockaddr_un` for this address: family in host order,
    /// then `sun_path` (NUL-padded for a pathname).
    pub fn to_sockaddr_un(&self) -> [u8; SOCKADDR_UN_LEN] {
        let mut raw = [0u8; SOCKADDR_UN_LEN];
        raw[..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
        match self {
            DataAddr::Abstract(name) => raw[3..].copy_from_slice(&name[..]),
            DataAddr::Pathname(path) => {
                let bytes = path.as_os_str().as_encoded_bytes();
                assert!(bytes.len() < SUN_PATH_LEN, "path too long for sockaddr_un");
                raw[2..2 + bytes.len()].copy_from_slice(bytes);
            }
        }
        raw
    }

    /// Parses a 110-byte `sockaddr_un` (e.g. the switch's reply).
    pub fn from_sockaddr_un(raw: &[u8]) -> io::Result<DataAddr> {
        if raw.len() != SOCKADDR_UN_LEN {
            return Err(invalid(format!("sockaddr_un of {} bytes", raw.len())));
        }
        let family = u16::from_ne_bytes([raw[0], raw[1]]);
        if family != AF_UNIX {
            return Err(invalid(format!("sun_family {family}, expected AF_UNIX")));
        }
        let path = &raw[2..];
        if path[0] == 0 {
            let mut name = Box::new([0u8; ABSTRACT_NAME_LEN]);
            name.copy_from_slice(&path[1..]);
            return Ok(DataAddr::Abstract(name));
        }
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        let text = std::str::from_utf8(&path[..end])
            .map_err(|_| invalid("non-UTF-8 pathname in sockaddr_un".to_owned()))?;
        Ok(DataAddr::Pathname(PathBuf::from(text)))
    }

    /// The same address as a std `SocketAddr` (abstract: addrlen 110).
    pub fn to_socket_addr(&self) -> io::Result<SocketAddr> {
        match self {
            DataAddr::Abstract(name) => SocketAddr::from_abstract_name(&name[..]),
            DataAddr::Pathname(path) => SocketAddr::from_pathname(path),
        }
    }

    /// A fresh abstract address laid out as UML lays out its own: bytes 1-3
    /// (struct padding), then pid and microseconds (host-order i32), then
    /// uninitialised memory, here non-zero pseudo-random garbage.
    pub fn uml_like_abstract() -> DataAddr {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let pid = std::process::id() as i32;
        let usecs = now.subsec_micros() as i32;
        let mut rng = XorShift::seeded();
        let mut name = Box::new([0u8; ABSTRACT_NAME_LEN]);
        rng.fill_nonzero(&mut name[..]);
        name[3..7].copy_from_slice(&pid.to_ne_bytes());
        name[7..11].copy_from_slice(&usecs.to_ne_bytes());
        DataAddr::Abstract(name)
    }
}

/// Which kind of address a client binds its data socket to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataSocketKind {
    /// Abstract, like UML.
    Abstract,
    /// A socket file in a temporary directory.
    Pathname,
}

/// A bound data socket not yet attached to the switch.
pub struct DataSocket {
    /// The socket itself.
    pub socket: UnixDatagram,
    /// The address it is bound to.
    pub addr: DataAddr,
    /// Directory holding a pathname socket (removed on drop).
    _dir: Option<TempDir>,
}

impl DataSocket {
    /// Creates and binds a datagram socket of the given kind.
    pub fn bind(kind: DataSocketKind) -> io::Result<DataSocket> {
        let (addr, dir) = match kind {
            DataSocketKind::Abstract => (DataAddr::uml_like_abstract(), None),
            DataSocketKind::Pathname => {
                let dir = tempfile::Builder::new().prefix("uml-client.").tempdir()?;
                (DataAddr::Pathname(dir.path().join("data")), Some(dir))
            }
        };
        let socket = UnixDatagram::bind_addr(&addr.to_socket_addr()?)?;
        Ok(DataSocket {
            socket,
            addr,
            _dir: dir,
        })
    }
}

/// Encodes a request: magic, version, type (each u32 host order), the
/// sockaddr, then 2 zero pad bytes.
pub fn encode_request(
    magic: u32,
    version: u32,
    request_type: u32,
    addr: &[u8; SOCKADDR_UN_LEN],
) -> [u8; REQUEST_LEN] {
    let mut request = [0u8; REQUEST_LEN];
    request[0..4].copy_from_slice(&magic.to_ne_bytes());
    request[4..8].copy_from_slice(&version.to_ne_bytes());
    request[8..12].copy_from_slice(&request_type.to_ne_bytes());
    request[12..12 + SOCKADDR_UN_LEN].copy_from_slice(addr);
    request
}

/// The request UML sends for a data socket bound to `addr`.
pub fn uml_request(addr: &DataAddr) -> [u8; REQUEST_LEN] {
    encode_request(MAGIC, VERSION, REQ_NEW_CONTROL, &addr.to_sockaddr_un())
}

/// A port of the switch, attached exactly as UML attaches.
pub struct Client {
    control: Option<UnixStream>,
    data: DataSocket,
    switch_addr: DataAddr,
    switch_socket_addr: SocketAddr,
}

impl Client {
    /// Attaches to the switch listening on `ctl_path`, with a data socket of
    /// the given kind.
    pub fn connect(ctl_path: &Path, kind: DataSocketKind) -> io::Result<Client> {
        Self::connect_to_port(ctl_path, kind, 0)
    }

    /// Attaches asking for port `port` (0: any), the number in bits 8..31
    /// of the request's type field, as `vde_plug DIR[port]` asks.
    pub fn connect_to_port(ctl_path: &Path, kind: DataSocketKind, port: u32) -> io::Result<Client> {
        let mut control = UnixStream::connect(ctl_path)?;
        let data = DataSocket::bind(kind)?;
        control.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        control.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        // UML writes the whole request with a single write().
        let request = encode_request(
            MAGIC,
            VERSION,
            REQ_NEW_CONTROL | (port << 8),
            &data.addr.to_sockaddr_un(),
        );
        let written = control.write(&request)?;
        if written != REQUEST_LEN {
            return Err(invalid(format!("short request write: {written} bytes")));
        }
        // Like UML: a single blocking read() must return all 110 bytes; EOF
        // or a short read is a failed handshake.
        let mut reply = [0u8; SOCKADDR_UN_LEN];
        let got = control.read(&mut reply).map_err(|err| {
            io::Error::new(err.kind(), format!("reading the 110-byte reply: {err}"))
        })?;
        if got != SOCKADDR_UN_LEN {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("reply of {got} bytes in one read(), UML needs {SOCKADDR_UN_LEN}"),
            ));
        }
        let switch_addr = DataAddr::from_sockaddr_un(&reply)?;
        let switch_socket_addr = switch_addr.to_socket_addr()?;
        control.set_read_timeout(None)?;
        Ok(Client {
            control: Some(control),
            data,
            switch_addr,
            switch_socket_addr,
        })
    }

    /// Attaches with an abstract data socket, like UML.
    pub fn connect_abstract(ctl_path: &Path) -> io::Result<Client> {
        Self::connect(ctl_path, DataSocketKind::Abstract)
    }

    /// Attaches with a pathname data socket.
    pub fn connect_pathname(ctl_path: &Path) -> io::Result<Client> {
        Self::connect(ctl_path, DataSocketKind::Pathname)
    }

    /// The switch's data-socket address from the handshake reply.
    pub fn switch_addr(&self) -> &DataAddr {
        &self.switch_addr
    }

    /// This client's own data-socket address.
    pub fn own_addr(&self) -> &DataAddr {
        &self.data.addr
    }

    /// The control stream, while it is open.
    pub fn control(&mut self) -> Option<&mut UnixStream> {
        self.control.as_mut()
    }

    /// The data socket (e.g. to shrink its buffer).
    pub fn data_socket(&self) -> &UnixDatagram {
        &self.data.socket
    }

    /// Sends one frame to the switch, as UML does (`sendto` the reply address).
    pub fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        let sent = self
            .data
            .socket
            .send_to_addr(frame, &self.switch_socket_addr)?;
        if sent != frame.len() {
            return Err(invalid(format!("sent {sent} of {} bytes", frame.len())));
        }
        Ok(())
    }

    /// Waits up to `timeout` for one frame; `None` if none arrived.
    pub fn recv_frame(&self, timeout: Duration) -> Option<Vec<u8>> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.data
            .socket
            .set_read_timeout(Some(timeout))
            .expect("set data socket timeout");
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        match self.data.socket.recv(&mut buf) {
            Ok(len) => {
                buf.truncate(len);
                Some(buf)
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(err) => panic!("recv on data socket: {err}"),
        }
    }

    /// Discards every frame already queued; returns how many there were.
    pub fn drain(&self) -> usize {
        let mut count = 0;
        while self.recv_frame(Duration::from_millis(1)).is_some() {
            count += 1;
        }
        count
    }

    /// Closes the data socket but keeps the port (its control stream) open:
    /// the switch's sends to it then fail with ECONNREFUSED.
    pub fn drop_data_socket(self) -> UnixStream {
        self.control.expect("control stream still open")
    }

    /// Closes the control stream: the switch must then remove the port.
    /// The data socket stays open so the test can check nothing arrives.
    pub fn close(&mut self) {
        self.control = None;
    }
}

/// A locally administered unicast MAC address numbered `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0x00, 0x5e, 0x10, 0x00, n]
}

/// An Ethernet frame (no FCS): `dst`, `src`, `ethertype` (big-endian), then
/// `payload_len` bytes of a recognisable pattern.
pub fn eth_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    eth_frame_with_payload(dst, src, ethertype, &payload)
}

/// An Ethernet frame (no FCS) carrying `payload`.
pub fn eth_frame_with_payload(
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A 64-byte test frame whose payload starts with `tag`, so that tests can
/// tell frames apart (and never depend on padding of short frames).
pub fn tagged_frame(dst: [u8; 6], src: [u8; 6], tag: u32) -> Vec<u8> {
    let mut payload = vec![0u8; 50];
    payload[..4].copy_from_slice(&tag.to_be_bytes());
    for (i, byte) in payload.iter_mut().enumerate().skip(4) {
        *byte = (i as u8) ^ 0x5a;
    }
    eth_frame_with_payload(dst, src, TEST_ETHERTYPE, &payload)
}

/// A tiny xorshift64* generator for garbage bytes (not cryptographic).
pub struct XorShift(u64);

impl XorShift {
    /// Seeded from the clock, the pid and a process-wide counter.
    pub fn seeded() -> XorShift {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let seed = nanos
            ^ (u64::from(std::process::id()) << 32)
            ^ count.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        XorShift(seed | 1)
    }

    /// Next pseudo-random 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with pseudo-random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_ne_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// Fills `buf` with pseudo-random bytes, none of them zero.
    pub fn fill_nonzero(&mut self, buf: &mut [u8]) {
        self.fill(buf);
        for byte in buf.iter_mut().filter(|b| **b == 0) {
            *byte = 0xa5;
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message)
}
