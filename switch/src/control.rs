//! The control plane: the listening control socket and the handshake of
//! each client (PROTOCOLS.md §1).
//!
//! A client connects, writes one request, reads the 110-byte address of
//! the data socket the switch made for it, and then keeps the connection
//! open for as long as it wants its port. The switch never writes on the
//! connection again; the client's hang-up removes the port, and so does
//! anything it writes after the request. Every refusal closes the
//! connection at once with a log line saying why: no client is left
//! waiting.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};
use uml_switch_proto::wire::{
    Request, RequestError, RequestKind, SockaddrKind, SockaddrUn, MAX_REQUEST_LEN,
    REQUEST_HEADER_LEN,
};
use uml_switch_proto::PortId;

use crate::dataplane::{AddPortError, Claim, DataplaneHandle, PortInfo, PortIo};
use crate::error::{create_hint, Error};
use crate::files::{Permissions, RemoveOnDrop};

/// Client handshakes in progress at once; more are refused at once, so
/// that a crowd of silent connections cannot exhaust descriptors.
const MAX_PENDING_HANDSHAKES: usize = 128;
/// Socket buffers of a port's data socket: room for bursts.
const DATA_SOCKET_BUFFER: usize = 2 << 20;
/// How long writing the 110-byte reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// How a listener sets up its clients' ports.
#[derive(Debug)]
pub struct ListenerSetup {
    /// Where data sockets go.
    pub placement: DataPlacement,
    /// Mode and group of the files made.
    pub perms: Permissions,
    /// How long a client may take to send its request.
    pub handshake_timeout: Duration,
}

/// A port attached through a control connection; `_file` removes its data
/// socket file (if any) when the port goes, or when the switch stops.
struct Attached {
    claim: Claim,
    info: PortInfo,
    _file: Option<RemoveOnDrop>,
}

/// The control socket, bound. Removes its file when dropped.
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    setup: Arc<ListenerSetup>,
}

impl ControlSocket {
    /// Binds `path` (with the mode and group of `setup`), replacing a
    /// stale socket file that nobody listens on.
    pub fn bind(path: &Path, setup: ListenerSetup) -> Result<Self, Error> {
        make_way_for_socket(path, |path| {
            std::os::unix::net::UnixStream::connect(path).map(drop)
        })?;
        let listener = setup
            .perms
            .create_file(path, || std::os::unix::net::UnixListener::bind(path))
            .map_err(|e| Error::Bind {
                path: path.into(),
                hint: create_hint(&e),
                source: e,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::os("control socket: cannot make it non-blocking", e))?;
        Ok(ControlSocket {
            listener,
            path: path.into(),
            setup: Arc::new(setup),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients until the task is dropped.
    pub async fn serve(&self, dataplane: DataplaneHandle) -> Result<(), Error> {
        let listener = UnixListener::from_std(
            self.listener
                .try_clone()
                .map_err(|e| Error::os("control socket: cannot duplicate it", e))?,
        )
        .map_err(|e| Error::os("control socket: cannot register it", e))?;
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: keep serving the ports we have.
                    warn!("control socket: accept failed: {e}; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                warn!("control socket: {MAX_PENDING_HANDSHAKES} handshakes already in progress; refusing a client");
                continue;
            };
            let dataplane = dataplane.clone();
            let setup = self.setup.clone();
            tokio::spawn(async move {
                let client = Client::new(stream);
                client.serve(dataplane, setup, permit).await;
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One control connection.
struct Client {
    stream: UnixStream,
    /// "pid N uid N" of the peer, for logs.
    who: String,
    /// The peer's uid (SO_PEERCRED): who may share its port.
    uid: Option<u32>,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("sent no complete request within {0:?}")]
    Timeout(Duration),
    #[error("hung up after {0} bytes, before completing its request")]
    HungUp(usize),
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("reading its request failed: {0}")]
    Read(io::Error),
    #[error("{0}")]
    DataSocket(String),
    #[error("writing the reply failed ({0}); the client went away")]
    Reply(io::Error),
    #[error("no port for it: {0}")]
    NoPort(AddPortError),
    #[error("the switch is shutting down")]
    Stopping,
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        let cred = stream.peer_cred().ok();
        let who = match &cred {
            Some(cred) => format!(
                "pid {} uid {}",
                cred.pid().map_or("?".into(), |p| p.to_string()),
                cred.uid()
            ),
            None => "unknown peer".into(),
        };
        Client {
            stream,
            who,
            uid: cred.map(|c| c.uid()),
        }
    }

    async fn serve(
        mut self,
        dataplane: DataplaneHandle,
        setup: Arc<ListenerSetup>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Attached { claim, info, _file } = match self.handshake(&dataplane, &setup).await {
            Ok(attached) => attached,
            Err(HandshakeError::HungUp(0)) => {
                // A liveness probe (another switch starting, a test harness).
                debug!("control connection ({}) closed without a request", self.who);
                return;
            }
            Err(e) => {
                warn!("control connection ({}) refused: {e}; closing it", self.who);
                return;
            }
        };
        drop(permit);
        let port = claim.port;
        info!(
            "port {port} connected: {} client {}{}",
            info.transport,
            info.peer,
            if info.description.is_empty() {
                String::new()
            } else {
                format!(", \"{}\"", info.description)
            }
        );
        // From now on the connection only says "still here".
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte).await {
            Ok(0) => {}
            Ok(_) => warn!("port {port}: client ({}) wrote on its control connection after its request; closing the port", self.who),
            Err(e) => warn!("port {port}: control connection ({}) failed: {e}; closing the port", self.who),
        }
        match dataplane.remove(claim).await {
            Ok(Some(stats)) => info!(
                "port {port} disconnected ({}): {}",
                info.peer,
                stats.summary()
            ),
            Ok(None) => info!(
                "port {port}: client {} left; the port's other clients stay",
                info.peer
            ),
            Err(e) => debug!("port {port}: not removed: {e}"),
        }
    }

    async fn handshake(
        &mut self,
        dataplane: &DataplaneHandle,
        setup: &ListenerSetup,
    ) -> Result<Attached, HandshakeError> {
        let timeout = setup.handshake_timeout;
        let request = tokio::time::timeout(timeout, self.read_request())
            .await
            .map_err(|_| HandshakeError::Timeout(timeout))??;
        let wanted = match (request.kind, request.port) {
            (RequestKind::NewPort0, _) => Some(PortId(0)),
            (RequestKind::NewControl, 0) => None,
            (RequestKind::NewControl, n) => Some(PortId(n)),
        };
        let claim = dataplane
            .claim(wanted, self.uid)
            .map_err(HandshakeError::NoPort)?;
        let data = match open_data_socket(&request.client, claim, &setup.placement, &setup.perms) {
            Ok(data) => data,
            Err(e) => {
                dataplane.release(claim);
                return Err(HandshakeError::DataSocket(e));
            }
        };
        // A pathname client's socket file belongs to its user (vde_switch's
        // notion of the port's user); shown beside the peer credentials.
        let owner = match request.client.kind() {
            SockaddrKind::Pathname(path) => std::fs::symlink_metadata(OsStr::from_bytes(path))
                .map(|meta| format!(", socket owner uid {}", meta.uid()))
                .unwrap_or_default(),
            SockaddrKind::Abstract(_) => String::new(),
        };
        let info = PortInfo {
            transport: "daemon",
            peer: format!("{} ({}{owner})", request.client, self.who),
            description: request.description.clone(),
        };
        let io = PortIo::Datagram {
            socket: data.socket,
            client: request.client,
        };
        dataplane
            .attach(claim, io, info.clone(), None)
            .await
            .map_err(|_| HandshakeError::Stopping)?
            .map_err(HandshakeError::NoPort)?;
        let reply = tokio::time::timeout(
            REPLY_TIMEOUT,
            self.stream.write_all(data.address.as_bytes()),
        )
        .await;
        if let Err(e) = reply.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())) {
            let _ = dataplane.remove(claim).await;
            return Err(HandshakeError::Reply(e));
        }
        Ok(Attached {
            claim,
            info,
            _file: data.file,
        })
    }

    /// Reads until a whole request has arrived (at least 122 bytes), then
    /// takes whatever else is already there (a description). Garbage is
    /// refused as soon as its first bytes show it.
    async fn read_request(&mut self) -> Result<Request, HandshakeError> {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let mut len = 0;
        while len < REQUEST_HEADER_LEN {
            let n = self
                .stream
                .read(&mut buf[len..])
                .await
                .map_err(HandshakeError::Read)?;
            if n == 0 {
                return Err(HandshakeError::HungUp(len));
            }
            len += n;
            match Request::decode(&buf[..len]) {
                Err(RequestError::Short { .. }) => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
        while len < buf.len() {
            match self.stream.try_read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
        Ok(Request::decode(&buf[..len])?)
    }
}

static DATA_SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// Readies `path` for a listening socket: fine if nothing is there; a
/// stale socket that `probe` (a connection attempt of the right type)
/// finds nobody listening on is removed; a live one, or anything that is
/// not a socket, is an error.
pub fn make_way_for_socket(
    path: &Path,
    probe: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), Error> {
    // Checked first so that an over-long path gets a clear message.
    SockaddrUn::pathname(path.as_os_str().as_bytes())?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(Error::NotASocket { path: path.into() }),
        Ok(_) => match probe(path) {
            Ok(()) => Err(Error::SocketInUse { path: path.into() }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!(
                    "{}: replacing a stale socket nobody listens on",
                    path.display()
                );
                std::fs::remove_file(path).map_err(|e| {
                    Error::os(
                        format!("{}: cannot remove the stale socket", path.display()),
                        e,
                    )
                })
            }
            Err(e) => Err(Error::Bind {
                path: path.into(),
                hint: " (it exists, and probing it for a live switch failed)",
                source: e,
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Bind {
            path: path.into(),
            hint: create_hint(&e),
            source: e,
        }),
    }
}

/// Where a listener puts its ports' data sockets.
#[derive(Debug, Clone)]
pub enum DataPlacement {
    /// Fresh abstract addresses (`--sock`): no files, but reachable only
    /// from the switch's network namespace, like UML's own.
    Abstract,
    /// Socket files `NNN.SEQ` in this directory (`--vde-dir`), as
    /// vde_switch makes them.
    Directory(PathBuf),
}

/// A port's data socket, ready to attach: bound (the reply), connected to
/// the client, so the kernel delivers only the client's frames and exempts
/// the client's sends from the 10-datagram queue limit
/// (`net.unix.max_dgram_qlen`). `file` removes a socket file with the port.
struct DataSocket {
    socket: UnixDatagram,
    address: SockaddrUn,
    file: Option<RemoveOnDrop>,
}

fn open_data_socket(
    client: &SockaddrUn,
    claim: Claim,
    placement: &DataPlacement,
    perms: &Permissions,
) -> Result<DataSocket, String> {
    let seq = DATA_SOCKET_SEQ.fetch_add(1, Ordering::Relaxed);
    let (socket, address, file) = match placement {
        DataPlacement::Abstract => {
            let name = format!(
                "uml-switch.{}.{:03}.{}.{seq}",
                std::process::id(),
                claim.port.0,
                claim.ep.0
            );
            let address = SockaddrUn::abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
            let bind_to = SocketAddr::from_abstract_name(&address.as_bytes()[3..])
                .map_err(|e| format!("cannot form the data socket address: {e}"))?;
            let socket = UnixDatagram::bind_addr(&bind_to)
                .map_err(|e| format!("cannot create a data socket: {e}"))?;
            (socket, address, None)
        }
        DataPlacement::Directory(dir) => {
            // The sequence number keeps names unique even while a departed
            // client's file is still being removed.
            let path = dir.join(format!("{:03}.{seq}", claim.port.0));
            let address =
                SockaddrUn::pathname(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
            // bind() never follows a symlink: a planted file makes it fail.
            let socket = perms
                .create_file(&path, || UnixDatagram::bind(&path))
                .map_err(|e| format!("cannot create data socket {}: {e}", path.display()))?;
            (socket, address, Some(RemoveOnDrop(path)))
        }
    };
    let client_addr = match client.kind() {
        SockaddrKind::Abstract(name) => SocketAddr::from_abstract_name(name),
        SockaddrKind::Pathname(path) => SocketAddr::from_pathname(OsStr::from_bytes(path)),
    }
    .map_err(|e| format!("client address {client} is unusable: {e}"))?;
    socket.connect_addr(&client_addr).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => " (the switch may not write to the client's socket: check its permissions)",
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                " (no socket there: abstract addresses belong to one network namespace, so run the switch in the client's)"
            }
            _ => "",
        };
        format!("cannot reach the client's data socket {client}: {e}{hint}")
    })?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("data socket: {e}"))?;
    if let Err(e) = crate::sys::set_buffer_sizes(socket.as_fd(), DATA_SOCKET_BUFFER) {
        warn!("data socket: cannot enlarge its buffers ({e}); bursts may be dropped");
    }
    Ok(DataSocket {
        socket,
        address,
        file,
    })
}
