//! IP encapsulations: raw frames in UDP datagrams, and VXLAN (RFC 7348)
//! to a unicast peer, which a Linux `vxlan` interface (or Open vSwitch, or
//! an EVPN fabric's VTEP) understands.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use uml_switch_proto::wire::vxlan::{self, VXLAN_HEADER_LEN};
use uml_switch_proto::MAX_FRAME_LEN;

use super::{FrameRx, FrameTx, Halves};
use crate::error::{open_hint, PlugError};

fn bind(text: &str, local: SocketAddr, remote: SocketAddr) -> Result<UdpSocket, PlugError> {
    let open_error = |source: io::Error| PlugError::Open {
        endpoint: text.into(),
        hint: open_hint(&source),
        source,
    };
    let socket = UdpSocket::bind(local).map_err(open_error)?;
    socket.connect(remote).map_err(open_error)?;
    Ok(socket)
}

struct Udp(UdpSocket);

impl FrameRx for Udp {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.0.recv(buf) {
                Ok(n) => return Ok(Some(n)),
                // The peer is not there (yet): ICMP port unreachable.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl FrameTx for Udp {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.0.send(frame) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `udp://LOCAL->REMOTE`: one raw frame per datagram.
pub(super) fn open_udp(
    text: &str,
    local: SocketAddr,
    remote: SocketAddr,
) -> Result<Halves, PlugError> {
    let socket = bind(text, local, remote)?;
    let tx = socket.try_clone().map_err(|source| PlugError::Open {
        endpoint: text.into(),
        hint: "",
        source,
    })?;
    Ok((Box::new(Udp(socket)), Box::new(Udp(tx))))
}

struct VxlanRx {
    socket: UdpSocket,
    vni: u32,
    /// Only datagrams from this address count; from any source port, since
    /// a VTEP (a Linux vxlan interface) sends from a per-flow port.
    peer: std::net::IpAddr,
    datagram: Vec<u8>,
}

impl FrameRx for VxlanRx {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.datagram) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            if from.ip() != self.peer {
                continue;
            }
            // Other VNIs and malformed headers are not for this cable.
            if let Ok((vni, inner)) = vxlan::decode(&self.datagram[..n]) {
                if vni == self.vni {
                    let len = inner.len().min(buf.len());
                    buf[..len].copy_from_slice(&inner[..len]);
                    return Ok(Some(len));
                }
            }
        }
    }
}

struct VxlanTx {
    socket: UdpSocket,
    remote: SocketAddr,
    datagram: Vec<u8>,
}

impl FrameTx for VxlanTx {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.datagram.truncate(VXLAN_HEADER_LEN);
        self.datagram.extend_from_slice(frame);
        match self.socket.send_to(&self.datagram, self.remote) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `vxlan://REMOTE?vni=N&local=ADDR`: VXLAN to one peer.
pub(super) fn open_vxlan(
    text: &str,
    local: SocketAddr,
    remote: SocketAddr,
    vni: u32,
) -> Result<Halves, PlugError> {
    // Not connected: the peer may answer from any source port.
    let socket = UdpSocket::bind(local).map_err(|source| PlugError::Open {
        endpoint: text.into(),
        hint: open_hint(&source),
        source,
    })?;
    let tx = socket.try_clone().map_err(|source| PlugError::Open {
        endpoint: text.into(),
        hint: "",
        source,
    })?;
    let mut header = Vec::with_capacity(VXLAN_HEADER_LEN + MAX_FRAME_LEN);
    header.extend_from_slice(&vxlan::encode_header(vni));
    Ok((
        Box::new(VxlanRx {
            socket,
            vni,
            peer: remote.ip(),
            datagram: vec![0; VXLAN_HEADER_LEN + MAX_FRAME_LEN + 1],
        }),
        Box::new(VxlanTx {
            socket: tx,
            remote,
            datagram: header,
        }),
    ))
}
