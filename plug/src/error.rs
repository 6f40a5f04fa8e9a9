//! What can end a cable, and the exit status each gives.

use std::io;

/// Why uml-plug stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    /// The endpoint text is not understood.
    #[error("`{text}`: {why}")]
    BadEndpoint { text: String, why: String },
    /// An endpoint could not be opened.
    #[error("{endpoint}: cannot open it: {source}{hint}")]
    Open {
        endpoint: String,
        source: io::Error,
        hint: &'static str,
    },
    /// A switch refused or closed the connection.
    #[error("{endpoint}: the switch {what}")]
    Switch { endpoint: String, what: String },
    /// Reading or writing an endpoint failed.
    #[error("{endpoint}: {source}")]
    Io { endpoint: String, source: io::Error },
    /// Command-line options are inconsistent.
    #[error("{0}")]
    Usage(String),
}

impl PlugError {
    /// The process exit status for this error, from sysexits(3).
    pub fn exit_code(&self) -> u8 {
        match self {
            PlugError::BadEndpoint { .. } | PlugError::Usage(_) => 64,
            PlugError::Switch { .. } => 69,
            PlugError::Open { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                77
            }
            PlugError::Open { source, .. }
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                69
            }
            PlugError::Open { .. } => 71,
            PlugError::Io { .. } => 74,
        }
    }
}

/// A hint for an error on opening an endpoint.
pub(crate) fn open_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => {
            " (nothing there: is the switch running, and is the path right?)"
        }
        io::ErrorKind::ConnectionRefused => " (a stale socket: no switch listens on it)",
        io::ErrorKind::PermissionDenied => {
            " (permission denied: check the socket's mode and group, or run as its user)"
        }
        _ => "",
    }
}
