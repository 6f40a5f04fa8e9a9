//! A host tap interface (created if missing; needs CAP_NET_ADMIN).

use std::io;
use std::sync::Arc;

use super::{FrameRx, FrameTx, Halves};
use crate::error::PlugError;

struct Tap(Arc<tun_tap::Iface>);

impl FrameRx for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.0.recv(buf).map(Some)
    }
}

impl FrameTx for Tap {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.send(frame).map(drop)
    }
}

pub(super) fn open(text: &str, name: &str) -> Result<Halves, PlugError> {
    let iface = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tap).map_err(|source| {
        PlugError::Open {
            endpoint: text.into(),
            hint: if source.kind() == io::ErrorKind::PermissionDenied {
                " (creating a tap needs CAP_NET_ADMIN: run as root, or create it with `ip tuntap add NAME mode tap user USER`)"
            } else {
                ""
            },
            source,
        }
    })?;
    let iface = Arc::new(iface);
    Ok((Box::new(Tap(iface.clone())), Box::new(Tap(iface))))
}
