//! The daemon's errors: each says what failed and what to do about it, and
//! maps to a sysexits(3) exit code.

use std::io;
use std::path::PathBuf;

/// Everything that stops the switch from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process listens on the control socket.
    #[error("{path}: another switch is already listening on this socket; stop it, or choose another --sock path")]
    SocketInUse { path: PathBuf },
    /// The path exists and is not a socket, so it is not ours to replace.
    #[error("{path}: exists and is not a socket; refusing to replace it (remove it, or choose another --sock path)")]
    NotASocket { path: PathBuf },
    /// The control socket could not be created.
    #[error("{path}: cannot create the control socket: {source}{hint}")]
    Bind {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    /// A path is too long for a Unix socket.
    #[error(transparent)]
    Address(#[from] uml_switch_proto::wire::AddrError),
    /// A tap interface could not be opened.
    #[error("tap `{name}`: cannot open it: {source}{hint}")]
    Tap {
        name: String,
        source: io::Error,
        hint: &'static str,
    },
    /// The command line or configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// Any other system call failure.
    #[error("{what}: {source}")]
    Os { what: String, source: io::Error },
}

impl Error {
    /// The process exit code for this error, from sysexits(3).
    pub fn exit_code(&self) -> u8 {
        const EX_UNAVAILABLE: u8 = 69;
        const EX_OSERR: u8 = 71;
        const EX_CANTCREAT: u8 = 73;
        const EX_NOPERM: u8 = 77;
        const EX_CONFIG: u8 = 78;
        let permission = |e: &io::Error| e.kind() == io::ErrorKind::PermissionDenied;
        match self {
            Error::SocketInUse { .. } => EX_UNAVAILABLE,
            Error::NotASocket { .. } | Error::Address(_) => EX_CANTCREAT,
            Error::Bind { source, .. } | Error::Tap { source, .. } if permission(source) => {
                EX_NOPERM
            }
            Error::Bind { .. } | Error::Tap { .. } => EX_CANTCREAT,
            Error::Config(_) => EX_CONFIG,
            Error::Os { .. } => EX_OSERR,
        }
    }

    /// Wraps an OS error with what was being done.
    pub fn os(what: impl Into<String>, source: io::Error) -> Self {
        Error::Os {
            what: what.into(),
            source,
        }
    }
}

/// A hint for an `io::Error` on creating a file or socket.
pub(crate) fn create_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (check the directory's permissions, or run as a user who may write there)"
        }
        io::ErrorKind::NotFound => " (the directory does not exist: create it first)",
        _ => "",
    }
}

/// A hint for an `io::Error` on opening a tap.
pub(crate) fn tap_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (creating a tap needs CAP_NET_ADMIN: run as root, or create it beforehand with `ip tuntap add NAME mode tap user USER`)"
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => " (/dev/net/tun is missing: load the tun module)",
        Some(libc::EBUSY) => " (the interface is held by another process, or is not a tap)",
        Some(libc::EINVAL) => " (the name is invalid, or an interface of another kind has this name)",
        _ => "",
    }
}
