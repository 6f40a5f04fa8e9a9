//! Transports whose connection is the port: UML's vector transport
//! `bess` (`vecN:transport=bess,dst=PATH`: `SOCK_SEQPACKET`, one bare
//! Ethernet frame per message) and QEMU's `-netdev stream` (`SOCK_STREAM`,
//! each frame after a 4-byte big-endian length).
//!
//! The connection is both the data path and the control: UML connects at
//! link-up and closes at link-down. The switch never closes a live bess
//! connection itself (a guest whose connection vanishes does not notice,
//! never reconnects and spins); bad frames are dropped and counted, and the
//! port goes when the data plane reads the guest's hang-up. A stream whose
//! record length cannot be a frame cannot be resynchronised, so that
//! connection (only) is closed.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::control::make_way_for_socket;
use crate::dataplane::{DataplaneHandle, PortInfo, PortIo, StreamPort};
use crate::error::{create_hint, Error};
use crate::files::Permissions;

/// Socket buffers of a connection: room for bursts.
const CONNECTION_BUFFER: usize = 2 << 20;

/// Which transport a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UML's vector transport: `SOCK_SEQPACKET`, a frame per message.
    Bess,
    /// QEMU's `-netdev stream`: `SOCK_STREAM`, length-prefixed frames.
    Stream,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Bess => "bess",
            Transport::Stream => "stream",
        }
    }

    fn socket(self) -> io::Result<Socket> {
        let kind = match self {
            Transport::Bess => Type::SEQPACKET,
            Transport::Stream => Type::STREAM,
        };
        Socket::new(Domain::UNIX, kind.cloexec(), None)
    }
}

/// A listening socket whose every connection is a port. Removes its file
/// when dropped.
pub struct ConnectionListener {
    transport: Transport,
    listener: AsyncFd<Socket>,
    path: PathBuf,
}

impl ConnectionListener {
    /// Binds `path` with `perms`, replacing a stale socket nobody listens
    /// on. Must be called inside the tokio runtime.
    pub fn bind(transport: Transport, path: &Path, perms: &Permissions) -> Result<Self, Error> {
        make_way_for_socket(path, |path| {
            transport.socket()?.connect(&SockAddr::unix(path)?)
        })?;
        let bind_error = |source: io::Error| Error::Bind {
            path: path.into(),
            hint: create_hint(&source),
            source,
        };
        let socket = transport.socket().map_err(bind_error)?;
        let address = SockAddr::unix(path).map_err(bind_error)?;
        perms
            .create_file(path, || socket.bind(&address))
            .map_err(bind_error)?;
        socket
            .listen(128)
            .and_then(|()| socket.set_nonblocking(true))
            .map_err(|e| Error::os(format!("{}: cannot listen", path.display()), e))?;
        let listener = crate::sys::watch_socket(socket)
            .map_err(|e| Error::os(format!("{}: cannot watch it", path.display()), e))?;
        Ok(ConnectionListener {
            transport,
            listener,
            path: path.into(),
        })
    }

    /// Binds `path`, if given, and says so in the log with the option a
    /// client needs to reach it.
    pub fn bind_if_asked(
        transport: Transport,
        path: Option<&Path>,
        perms: &Permissions,
    ) -> Result<Option<Self>, Error> {
        let Some(path) = path else { return Ok(None) };
        let listener = Self::bind(transport, path, perms)?;
        let path = path.display();
        let client = match transport {
            Transport::Bess => format!("UML: vec0:transport=bess,dst={path}"),
            Transport::Stream => {
                format!("QEMU: -netdev stream,id=n0,server=off,addr.type=unix,addr.path={path}")
            }
        };
        info!("listening for {} on {path}; {client}", transport.name());
        Ok(Some(listener))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts guests until the task is dropped.
    pub async fn serve(&self, dataplane: DataplaneHandle) -> Result<(), Error> {
        let name = self.transport.name();
        loop {
            let mut ready = self
                .listener
                .readable()
                .await
                .map_err(|e| Error::os(format!("{name} socket: cannot wait on it"), e))?;
            let conn = match ready.try_io(|listener| listener.get_ref().accept()) {
                Ok(Ok((conn, _))) => conn,
                Ok(Err(e)) => {
                    // EMFILE and friends: keep serving the ports we have.
                    warn!("{name} socket: accept failed: {e}; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_would_block) => continue,
            };
            let dataplane = dataplane.clone();
            let transport = self.transport;
            tokio::spawn(async move { serve_guest(transport, conn, dataplane).await });
        }
    }
}

impl Drop for ConnectionListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One guest's connection, from its acceptance to its hang-up.
async fn serve_guest(transport: Transport, conn: Socket, dataplane: DataplaneHandle) {
    let name = transport.name();
    let credentials = crate::sys::peer_credentials(conn.as_fd()).ok();
    let peer = match credentials {
        Some((pid, uid)) => format!("pid {pid} uid {uid}"),
        None => "unknown peer".into(),
    };
    if let Err(e) = conn.set_nonblocking(true) {
        // Closing is the only way out; the guest will see its link fail.
        warn!("{name} connection ({peer}): cannot make it non-blocking ({e}); closing it");
        return;
    }
    if let Err(e) = crate::sys::set_buffer_sizes(conn.as_fd(), CONNECTION_BUFFER) {
        warn!(
            "{name} connection ({peer}): cannot enlarge its buffers ({e}); bursts may be dropped"
        );
    }
    let claim = match dataplane.claim(None, credentials.map(|(_, uid)| uid)) {
        Ok(claim) => claim,
        Err(e) => {
            warn!("{name} connection ({peer}) refused: {e}; closing it");
            return;
        }
    };
    let info = PortInfo {
        transport: name,
        peer: peer.clone(),
        description: String::new(),
    };
    let (on_close, closed) = oneshot::channel();
    match dataplane
        .attach(claim, port_io(transport, conn), info, Some(on_close))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!("{name} connection ({peer}) refused: {e}; closing it");
            return;
        }
        Err(e) => {
            debug!("{name} connection ({peer}): {e}");
            return;
        }
    }
    let port = claim.port;
    info!("port {port} connected: {name} client ({peer})");
    // The data plane says when the guest hangs up (link down, halt).
    let _ = closed.await;
    match dataplane.remove(claim).await {
        Ok(stats) => info!(
            "port {port} disconnected ({name} client {peer}): {}",
            stats.unwrap_or_default().summary()
        ),
        Err(e) => debug!("port {port}: not removed: {e}"),
    }
}

fn port_io(transport: Transport, conn: Socket) -> PortIo {
    match transport {
        Transport::Bess => PortIo::Seqpacket(conn),
        Transport::Stream => PortIo::Stream(StreamPort::new(conn.into())),
    }
}
