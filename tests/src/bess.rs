//! A test client of the switch's `--bess PATH` listener, speaking UML's
//! vector transport `bess` (`vecN:transport=bess,dst=PATH`) as UML does.
//!
//! Written by hand from UML-TESTING.md rather than with the switch's code,
//! so the tests check the switch independently:
//!
//! 1. `socket(AF_UNIX, SOCK_SEQPACKET)`, `connect(PATH)` (UML does this at
//!    link-up; it binds no address of its own unless given `src=`);
//! 2. every message, both ways, is one bare Ethernet frame: no header, no
//!    padding, no FCS;
//! 3. closing the socket (UML: link-down) is the only teardown signal.

use std::io::{self, ErrorKind, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

/// Receive buffer: far above any legal frame, so oversize deliveries show
/// (a SEQPACKET message longer than the buffer would be truncated).
const RECV_BUFFER_LEN: usize = 65_536;

/// What one receive on a bess connection produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BessRecv {
    /// One message: a frame.
    Frame(Vec<u8>),
    /// The switch closed the connection (end of file).
    Eof,
    /// Nothing arrived within the timeout.
    Nothing,
}

/// One port of the switch, attached as UML's bess transport attaches.
/// Dropping it closes the connection.
#[derive(Debug)]
pub struct BessClient {
    socket: Socket,
}

impl BessClient {
    /// Connects a `SOCK_SEQPACKET` unix socket to `path`.
    pub fn connect(path: &Path) -> io::Result<BessClient> {
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        socket.connect(&SockAddr::unix(path)?)?;
        Ok(BessClient { socket })
    }

    /// The underlying socket (e.g. to shrink its buffers).
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Sends `frame` as one message.
    pub fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        let sent = self.socket.send(frame)?;
        if sent != frame.len() {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("sent {sent} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` for one message, or end of file.
    ///
    /// A zero-length message would be indistinguishable from end of file;
    /// the switch never sends one (frames are at least 14 bytes).
    pub fn recv(&self, timeout: Duration) -> io::Result<BessRecv> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        loop {
            return match (&self.socket).read(&mut buf) {
                Ok(0) => Ok(BessRecv::Eof),
                Ok(len) => {
                    buf.truncate(len);
                    Ok(BessRecv::Frame(buf))
                }
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    Ok(BessRecv::Nothing)
                }
                Err(err) if err.kind() == ErrorKind::ConnectionReset => Ok(BessRecv::Eof),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => Err(err),
            };
        }
    }

    /// Waits up to `timeout` for one frame; `None` if none arrived.
    /// Panics if the switch closed the connection or the receive fails.
    pub fn recv_frame(&self, timeout: Duration) -> Option<Vec<u8>> {
        match self.recv(timeout) {
            Ok(BessRecv::Frame(frame)) => Some(frame),
            Ok(BessRecv::Nothing) => None,
            Ok(BessRecv::Eof) => panic!("the switch closed the bess connection"),
            Err(err) => panic!("recv on the bess connection: {err}"),
        }
    }

    /// Whether the switch closes the connection within `timeout`; frames
    /// received meanwhile are discarded.
    pub fn sees_eof_within(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.recv(left) {
                Ok(BessRecv::Eof) => return true,
                Ok(BessRecv::Frame(_)) => {}
                Ok(BessRecv::Nothing) => return false,
                Err(err) => panic!("recv on the bess connection: {err}"),
            }
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
}
