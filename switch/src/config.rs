//! The switch's configuration, as the command line gives it.

use std::path::{Path, PathBuf};

/// The control socket when none is given: upstream UML's default.
pub const DEFAULT_SOCK: &str = "/tmp/uml.ctl";
use std::time::Duration;

use uml_switch_proto::{FdbConfig, SwitchConfig};

/// Everything `run` needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The control socket UML is given in `eth0=daemon,,unix,PATH`
    /// (see [`Config::control_socket`] for the default).
    pub sock: Option<PathBuf>,
    /// A vde_switch-style directory to serve (`DIR/ctl` and data sockets).
    pub vde_dir: Option<PathBuf>,
    /// A `SOCK_SEQPACKET` socket for UML's vector transport `bess`.
    pub bess: Option<PathBuf>,
    /// A stream socket for QEMU's `-netdev stream`.
    pub stream: Option<PathBuf>,
    /// Permission bits of the socket files created.
    pub mode: u32,
    /// Group (name or id) of the files created.
    pub group: Option<String>,
    /// Host tap interfaces to attach, each as a port.
    pub taps: Vec<String>,
    /// Hub mode: flood every frame, learn nothing.
    pub hub: bool,
    /// Ports are numbered 0 to `max_ports - 1`.
    pub max_ports: u32,
    /// The most MAC addresses the forwarding table holds.
    pub fdb_size: usize,
    /// How long a learned address lives without traffic.
    pub fdb_age: Duration,
    /// How long an address stays on its port when it shows up on another.
    pub fdb_min_persistence: Duration,
    /// How long a client may take to send its request.
    pub handshake_timeout: Duration,
    /// Data-plane worker threads.
    pub threads: usize,
    /// How long a worker keeps polling without sleeping after a frame.
    pub busy_poll: Duration,
}

impl Config {
    /// The defaults, with the given control socket.
    pub fn new(sock: impl Into<PathBuf>) -> Self {
        let fdb = FdbConfig::default();
        Config {
            sock: Some(sock.into()),
            vde_dir: None,
            bess: None,
            stream: None,
            mode: 0o600,
            group: None,
            taps: Vec::new(),
            hub: false,
            max_ports: SwitchConfig::default().max_ports,
            fdb_size: fdb.max_entries,
            fdb_age: fdb.ageing,
            fdb_min_persistence: fdb.min_persistence,
            handshake_timeout: Duration::from_secs(5),
            threads: 1,
            busy_poll: Duration::from_micros(50),
        }
    }

    /// The `--sock` control socket: as given, or `/tmp/uml.ctl` (UML's
    /// default) when no other way in (`--vde-dir`, `--bess`, `--stream`) is
    /// given.
    pub fn control_socket(&self) -> Option<&Path> {
        let other_way_in = self.vde_dir.is_some() || self.bess.is_some() || self.stream.is_some();
        match &self.sock {
            Some(sock) => Some(sock),
            None if other_way_in => None,
            None => Some(Path::new(DEFAULT_SOCK)),
        }
    }

    /// The forwarding core's configuration.
    pub fn switch_config(&self, hash_seed: u64) -> SwitchConfig {
        SwitchConfig {
            max_ports: self.max_ports,
            hub: self.hub,
            fdb: FdbConfig {
                max_entries: self.fdb_size,
                ageing: self.fdb_age,
                min_persistence: self.fdb_min_persistence,
            },
            hash_seed,
            announce_learning: false,
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if self.max_ports < 2 {
            return Err(crate::Error::Config(format!(
                "--max-ports {} is too small: a switch needs at least 2 ports",
                self.max_ports
            )));
        }
        if self.taps.len() >= self.max_ports as usize {
            return Err(crate::Error::Config(format!(
                "{} taps do not fit in {} ports (port 0 is reserved): raise --max-ports",
                self.taps.len(),
                self.max_ports
            )));
        }
        if self.fdb_size == 0 {
            return Err(crate::Error::Config("--fdb-size must be at least 1".into()));
        }
        if let Some(dup) = self
            .taps
            .iter()
            .enumerate()
            .find_map(|(i, t)| self.taps[..i].contains(t).then_some(t))
        {
            return Err(crate::Error::Config(format!("--tap {dup} is given twice")));
        }
        Ok(())
    }
}
