//! IP encapsulations: raw frames in UDP datagrams, and VXLAN (RFC 7348)
//! to a unicast peer, which a Linux `vxlan` interface (or Open vSwitch, or
//! an EVPN fabric's VTEP) understands.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

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

/// Which peer each MAC address was last seen behind, so that unicast
/// goes to one peer and only broadcast, multicast and unknown unicast are
/// replicated to all (head-end replication).
type PeerTable = Arc<Mutex<HashMap<[u8; 6], SocketAddr>>>;

/// The most MAC addresses remembered; beyond it, frames are replicated.
const PEER_TABLE_LIMIT: usize = 4096;

struct VxlanRx {
    socket: UdpSocket,
    vni: u32,
    /// Only datagrams from these addresses count, from any source port,
    /// since a VTEP (a Linux vxlan interface) sends from a per-flow port.
    peers: Vec<SocketAddr>,
    learned: PeerTable,
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
            let Some(peer) = self.peers.iter().find(|p| p.ip() == from.ip()) else {
                continue;
            };
            // Other VNIs and malformed headers are not for this cable.
            let Ok((vni, inner)) = vxlan::decode(&self.datagram[..n]) else {
                continue;
            };
            if vni != self.vni {
                continue;
            }
            if self.peers.len() > 1 && inner.len() >= 12 && inner[6] & 1 == 0 {
                let mut source = [0u8; 6];
                source.copy_from_slice(&inner[6..12]);
                let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
                if learned.len() < PEER_TABLE_LIMIT || learned.contains_key(&source) {
                    learned.insert(source, *peer);
                }
            }
            let len = inner.len().min(buf.len());
            buf[..len].copy_from_slice(&inner[..len]);
            return Ok(Some(len));
        }
    }
}

struct VxlanTx {
    socket: UdpSocket,
    peers: Vec<SocketAddr>,
    learned: PeerTable,
    datagram: Vec<u8>,
}

impl VxlanTx {
    fn send_to(&self, peer: SocketAddr) -> io::Result<()> {
        match self.socket.send_to(&self.datagram, peer) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl FrameTx for VxlanTx {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.datagram.truncate(VXLAN_HEADER_LEN);
        self.datagram.extend_from_slice(frame);
        let known = (self.peers.len() > 1 && frame.len() >= 6 && frame[0] & 1 == 0)
            .then(|| {
                let mut dst = [0u8; 6];
                dst.copy_from_slice(&frame[..6]);
                let learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
                learned.get(&dst).copied()
            })
            .flatten();
        match known {
            Some(peer) => self.send_to(peer),
            None => self.peers.iter().try_for_each(|&peer| self.send_to(peer)),
        }
    }
}

/// `vxlan://PEER[,PEER...]?vni=N&local=ADDR`: VXLAN to unicast peers.
pub(super) fn open_vxlan(
    text: &str,
    local: SocketAddr,
    peers: &[SocketAddr],
    vni: u32,
) -> Result<Halves, PlugError> {
    // Not connected: a peer may answer from any source port.
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
    let learned = PeerTable::default();
    Ok((
        Box::new(VxlanRx {
            socket,
            vni,
            peers: peers.to_vec(),
            learned: learned.clone(),
            datagram: vec![0; VXLAN_HEADER_LEN + MAX_FRAME_LEN + 1],
        }),
        Box::new(VxlanTx {
            socket: tx,
            peers: peers.to_vec(),
            learned,
            datagram: header,
        }),
    ))
}
