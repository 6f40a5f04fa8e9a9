//! UML's vector transport `bess` (`vecN:transport=bess,dst=PATH`): a
//! `SOCK_SEQPACKET` listener whose every connection is a port, one bare
//! Ethernet frame per message.
//!
//! The connection is both the data path and the control: UML connects at
//! link-up and closes at link-down. The switch never closes a live
//! connection itself (a guest whose connection vanishes does not notice,
//! never reconnects and spins); bad frames are dropped and counted, and the
//! port goes when the data plane reads the guest's hang-up.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::control::make_way_for_socket;
use crate::dataplane::{DataplaneHandle, PortInfo, PortIo};
use crate::error::{create_hint, Error};
use crate::files::Permissions;

/// Socket buffers of a bess connection: room for bursts.
const BESS_SOCKET_BUFFER: usize = 2 << 20;

/// The listening bess socket. Removes its file when dropped.
pub struct BessListener {
    listener: AsyncFd<Socket>,
    path: PathBuf,
}

fn seqpacket_socket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

impl BessListener {
    /// Binds `path` with `perms`, replacing a stale socket nobody listens
    /// on. Must be called inside the tokio runtime.
    pub fn bind(path: &Path, perms: &Permissions) -> Result<Self, Error> {
        make_way_for_socket(path, |path| {
            seqpacket_socket()?.connect(&SockAddr::unix(path)?)
        })?;
        let bind_error = |source: io::Error| Error::Bind {
            path: path.into(),
            hint: create_hint(&source),
            source,
        };
        let socket = seqpacket_socket().map_err(bind_error)?;
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
        Ok(BessListener {
            listener,
            path: path.into(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts guests until the task is dropped.
    pub async fn serve(&self, dataplane: DataplaneHandle) -> Result<(), Error> {
        loop {
            let mut ready = self
                .listener
                .readable()
                .await
                .map_err(|e| Error::os("bess socket: cannot wait on it", e))?;
            let conn = match ready.try_io(|listener| listener.get_ref().accept()) {
                Ok(Ok((conn, _))) => conn,
                Ok(Err(e)) => {
                    // EMFILE and friends: keep serving the ports we have.
                    warn!("bess socket: accept failed: {e}; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_would_block) => continue,
            };
            let dataplane = dataplane.clone();
            tokio::spawn(async move { serve_guest(conn, dataplane).await });
        }
    }
}

impl Drop for BessListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One guest's connection, from its acceptance to its hang-up.
async fn serve_guest(conn: Socket, dataplane: DataplaneHandle) {
    let credentials = crate::sys::peer_credentials(conn.as_fd()).ok();
    let peer = match credentials {
        Some((pid, uid)) => format!("pid {pid} uid {uid}"),
        None => "unknown peer".into(),
    };
    if let Err(e) = conn.set_nonblocking(true) {
        // Closing is the only way out; the guest will see its link fail.
        warn!("bess connection ({peer}): cannot make it non-blocking ({e}); closing it");
        return;
    }
    if let Err(e) = crate::sys::set_buffer_sizes(conn.as_fd(), BESS_SOCKET_BUFFER) {
        warn!("bess connection ({peer}): cannot enlarge its buffers ({e}); bursts may be dropped");
    }
    let claim = match dataplane.claim(None, credentials.map(|(_, uid)| uid)) {
        Ok(claim) => claim,
        Err(e) => {
            warn!("bess connection ({peer}) refused: {e}; closing it");
            return;
        }
    };
    let info = PortInfo {
        transport: "bess",
        peer: peer.clone(),
        description: String::new(),
    };
    let (on_close, closed) = oneshot::channel();
    match dataplane
        .attach(claim, PortIo::Seqpacket(conn), info, Some(on_close))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!("bess connection ({peer}) refused: {e}; closing it");
            return;
        }
        Err(e) => {
            debug!("bess connection ({peer}): {e}");
            return;
        }
    }
    let port = claim.port;
    info!("port {port} connected: bess client ({peer})");
    // The data plane says when the guest hangs up (link down, halt).
    let _ = closed.await;
    match dataplane.remove(claim).await {
        Ok(stats) => info!(
            "port {port} disconnected (bess client {peer}): {}",
            stats.unwrap_or_default().summary()
        ),
        Err(e) => debug!("port {port}: not removed: {e}"),
    }
}
