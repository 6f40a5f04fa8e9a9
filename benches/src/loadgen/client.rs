//! A port as User-Mode-Linux's "daemon" transport (protocol version 3)
//! makes one: a control stream to the switch, and an unconnected datagram
//! socket bound to an abstract address with the full 110-byte addrlen.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::sys::{self, RawSockaddr, RecvBuffers, SOCKADDR_UN_LEN};

/// Request magic, host order (`ce fa ed fe` on x86).
const MAGIC: u32 = 0xfeed_face;
/// Protocol version UML speaks.
const VERSION: u32 = 3;
/// `REQ_NEW_CONTROL`.
const REQ_NEW_CONTROL: u32 = 0;
/// Size of UML's request (12 header bytes, sockaddr_un, 2 pad bytes).
const REQUEST_LEN: usize = 124;
/// Length of an abstract name: every `sun_path` byte after the NUL.
const ABSTRACT_NAME_LEN: usize = 107;
/// `AF_UNIX`.
const AF_UNIX: u16 = 1;
/// Bound on the handshake (the reply read).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer length per datagram: UML's MTU + 26, with room to spare.
pub const RECV_LEN: usize = 2048;
/// Ethertype of load frames (IEEE local experimental).
pub const ETHERTYPE: u16 = 0x88b5;
/// Broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Counter making every abstract name of this process unique.
static NEXT_NAME: AtomicU32 = AtomicU32::new(0);

/// One switch port (or, for the direct target, one bare endpoint).
pub struct Port {
    /// The data socket: unconnected, bound to `addr`.
    pub data: UnixDatagram,
    /// Our own address (110-byte `sockaddr_un`, abstract).
    pub addr: RawSockaddr,
    /// Where our frames go: the switch's data socket, or a peer in direct mode.
    pub dest: RawSockaddr,
    /// Our MAC address.
    pub mac: [u8; 6],
    /// Kept open until the port is dropped: closing it is the teardown signal.
    _control: Option<UnixStream>,
}

impl Port {
    /// A data socket bound to a fresh UML-like abstract address (NUL, 3 pad
    /// bytes, pid, microseconds, then counter and filler bytes), not yet
    /// attached anywhere (`dest` is our own address until set).
    pub fn bind(mac: [u8; 6]) -> io::Result<Port> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let counter = NEXT_NAME.fetch_add(1, Ordering::Relaxed);
        let mut name = [0u8; ABSTRACT_NAME_LEN];
        name[3..7].copy_from_slice(&(std::process::id() as i32).to_ne_bytes());
        name[7..11].copy_from_slice(&(now.subsec_micros() as i32).to_ne_bytes());
        name[11..15].copy_from_slice(&counter.to_ne_bytes());
        // UML leaves the rest uninitialised (non-zero in practice): fill it.
        let mut x = u64::from(counter)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(now.subsec_nanos()))
            | 1;
        for b in &mut name[15..] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x as u8) | 1;
        }
        let data = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name)?)?;
        let mut addr = [0u8; SOCKADDR_UN_LEN];
        addr[..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
        addr[3..].copy_from_slice(&name);
        Ok(Port {
            data,
            addr,
            dest: addr,
            mac,
            _control: None,
        })
    }

    /// Attaches to the switch listening on `ctl`: connect, write the 124-byte
    /// v3 request, read exactly 110 bytes (the switch's data address), keep
    /// the control stream open.
    pub fn attach(mac: [u8; 6], ctl: &Path) -> io::Result<Port> {
        let mut port = Port::bind(mac)?;
        let mut control = UnixStream::connect(ctl)?;
        control.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        control.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut request = [0u8; REQUEST_LEN];
        request[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
        request[4..8].copy_from_slice(&VERSION.to_ne_bytes());
        request[8..12].copy_from_slice(&REQ_NEW_CONTROL.to_ne_bytes());
        request[12..12 + SOCKADDR_UN_LEN].copy_from_slice(&port.addr);
        control.write_all(&request)?;
        let mut reply = [0u8; SOCKADDR_UN_LEN];
        control.read_exact(&mut reply).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading the switch's 110-byte reply: {e}"),
            )
        })?;
        if u16::from_ne_bytes([reply[0], reply[1]]) != AF_UNIX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "switch reply is not an AF_UNIX sockaddr_un",
            ));
        }
        port.dest = reply;
        port._control = Some(control);
        Ok(port)
    }

    /// Sends one frame to `dest`.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        sys::send_to(&self.data, frame, &self.dest).map(|_| ())
    }

    /// Discards every datagram already queued; returns how many.
    pub fn drain(&self) -> io::Result<usize> {
        let mut bufs = RecvBuffers::new(32, RECV_LEN);
        let mut total = 0;
        loop {
            match sys::recv_batch(&self.data, &mut bufs, libc::MSG_DONTWAIT) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) if sys::is_transient(&e) => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for one datagram; `Ok(None)` on timeout.
    pub fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.data.set_read_timeout(Some(left))?;
            match self.data.recv(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if sys::is_transient(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A frame of `size` bytes (at least 14): Ethernet header + zero payload.
pub fn frame(dst: [u8; 6], src: [u8; 6], size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size.max(14)];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    f
}

/// Locally administered unicast MAC 02:00:00:00:`kind`:`index`.
pub fn mac(kind: u8, index: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, kind, index]
}
