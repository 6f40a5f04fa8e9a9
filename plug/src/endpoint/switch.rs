//! A port of a switch, attached the way UML and libvdeplug attach: the
//! daemon protocol's request on the control socket, a datagram socket for
//! frames. Works with uml-switch (`--sock`, `--vde-dir`) and vde_switch.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use uml_switch_proto::wire::{Request, SockaddrKind, SockaddrUn, SOCKADDR_UN_LEN};

use super::{End, FrameRx, FrameTx, Halves};
use crate::error::{open_hint, PlugError};

/// How long the switch may take to answer the request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

static SEQ: AtomicU32 = AtomicU32::new(0);

struct Rx(UnixDatagram);
struct Tx(UnixDatagram);

impl FrameRx for Rx {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.0.recv(buf).map(Some)
    }
}

impl FrameTx for Tx {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.send(frame).map(drop)
    }
}

/// Attaches to the switch whose control socket is `ctl`, asking for `port`
/// (0: any). The control connection is watched: when the switch closes it,
/// the cable ends with a message naming the switch.
pub(super) fn open(
    text: &str,
    ctl: &Path,
    port: u32,
    ender: &Sender<End>,
) -> Result<Halves, PlugError> {
    let open_error = |source: io::Error| PlugError::Open {
        endpoint: text.into(),
        hint: open_hint(&source),
        source,
    };
    let mut control = UnixStream::connect(ctl).map_err(open_error)?;
    // An abstract address, bound with the whole 110-byte length, as UML's.
    let name = format!(
        "uml-plug.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let address =
        SockaddrUn::abstract_name(name.as_bytes()).map_err(|e| PlugError::Usage(e.to_string()))?;
    let bind_to = SocketAddr::from_abstract_name(&address.as_bytes()[3..]).map_err(open_error)?;
    let data = UnixDatagram::bind_addr(&bind_to).map_err(open_error)?;
    let description = format!("uml-plug: pid={}", std::process::id());
    let request = Request::new(address, port, &description).encode();
    control
        .set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(open_error)?;
    control
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(open_error)?;
    control.write_all(&request).map_err(open_error)?;
    let mut reply = [0u8; SOCKADDR_UN_LEN];
    if let Err(e) = control.read_exact(&mut reply) {
        return Err(PlugError::Switch {
            endpoint: text.into(),
            what: match e.kind() {
                io::ErrorKind::UnexpectedEof => format!(
                    "at {} closed the connection without a reply (port {port} out of range or taken by another user?)",
                    ctl.display()
                ),
                _ => format!("at {} did not answer: {e}", ctl.display()),
            },
        });
    }
    let switch = SockaddrUn::from_bytes(reply);
    let switch_addr = match switch.kind() {
        SockaddrKind::Abstract(name) => SocketAddr::from_abstract_name(name),
        SockaddrKind::Pathname(path) => {
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))
        }
    }
    .map_err(open_error)?;
    // Connected, the switch's sends to us skip the 10-datagram queue limit.
    data.connect_addr(&switch_addr).map_err(open_error)?;
    control.set_read_timeout(None).map_err(open_error)?;
    watch_control(text, ctl, control, ender.clone());
    let tx = data.try_clone().map_err(open_error)?;
    Ok((Box::new(Rx(data)), Box::new(Tx(tx))))
}

/// Ends the cable when the switch closes the control connection (or, in
/// breach of the protocol, writes on it).
fn watch_control(text: &str, ctl: &Path, mut control: UnixStream, ender: Sender<End>) {
    let endpoint = text.to_owned();
    let ctl = ctl.display().to_string();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let what = match control.read(&mut byte) {
            Ok(0) => {
                format!("at {ctl} closed the control connection (it stopped, or dropped this port)")
            }
            Ok(_) => {
                format!("at {ctl} wrote on the control connection, which the protocol forbids")
            }
            Err(e) => format!("at {ctl}: control connection failed: {e}"),
        };
        let _ = ender.send(End {
            result: Err(PlugError::Switch { endpoint, what }),
        });
    });
}
