//! The command line of `uml-switch`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::Config;

const EXAMPLES: &str = "\
Examples:
  uml-switch --sock /tmp/uml.ctl
      then boot User-Mode-Linux guests with  eth0=daemon,,unix,/tmp/uml.ctl
  uml-switch --sock /run/uml.ctl --tap tap0
      also attach host interface tap0 (created if missing; needs root)
  uml-switch --vde-dir /run/vde.ctl --mode 0660 --group kvm
      the vde_switch layout, for vde_plug /run/vde.ctl, QEMU -netdev vde
      and UML eth0=vde,/run/vde.ctl, usable by group kvm

Logs go to stderr; set UML_SWITCH_LOG=debug for more.";

/// A userspace Ethernet switch for User-Mode-Linux guests (daemon transport):
/// learns MAC addresses and forwards frames between guests and host taps.
#[derive(Debug, Parser)]
#[command(name = "uml-switch", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Control socket to listen on; give guests `eth0=daemon,,unix,PATH`
    /// [default: /tmp/uml.ctl, unless --vde-dir is given]
    #[arg(short, long, value_name = "PATH", env = "UML_SWITCH_SOCK")]
    pub sock: Option<PathBuf>,
    /// Also (or instead) serve a vde_switch-style directory: DIR/ctl and one
    /// data socket per port, for vde_plug, QEMU `-netdev vde,sock=DIR` and
    /// UML `eth0=vde,DIR` (or `eth0=daemon,,unix,DIR/ctl`).
    #[arg(long, value_name = "DIR")]
    pub vde_dir: Option<PathBuf>,
    /// Also (or instead) listen for UML's vector transport:
    /// `vec0:transport=bess,dst=PATH` (a SOCK_SEQPACKET socket; every
    /// connection is a port).
    #[arg(long, value_name = "PATH")]
    pub bess: Option<PathBuf>,
    /// Also (or instead) listen for QEMU (7.2 or later):
    /// `-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH`
    /// (every connection is a port; frames after a 4-byte length).
    #[arg(long, value_name = "PATH")]
    pub stream: Option<PathBuf>,
    /// Permission bits (octal) of the socket files created; directories get
    /// search permission for the same classes.
    #[arg(short, long, value_name = "MODE", default_value = "0600",
          value_parser = crate::files::parse_mode)]
    pub mode: u32,
    /// Group (name or id) given to the sockets and directory created.
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Attach a host tap interface as a port, creating it if it does not
    /// exist (repeatable). Addresses on it are left to you.
    #[arg(short, long = "tap", value_name = "NAME")]
    pub taps: Vec<String>,
    /// Act as a hub: flood every frame to every other port, learn nothing.
    #[arg(long)]
    pub hub: bool,
    /// Number of ports (0 to N-1; port 0 is only given to clients that ask for it).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(2..=65_536))]
    pub max_ports: u32,
    /// Most MAC addresses the forwarding table holds; beyond it new ones are flooded, not learned.
    #[arg(long, value_name = "N", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub fdb_size: u64,
    /// Seconds a learned MAC address lives without traffic.
    #[arg(long, value_name = "SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub fdb_age: u64,
    /// Seconds a MAC address stays on its port after its last frame, even if it shows up on another.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub fdb_min_persistence: u64,
    /// Data-plane threads; ports are spread over them.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// Microseconds a data-plane thread keeps polling, instead of sleeping,
    /// after a light turn (a few frames): round trips get shorter for some
    /// CPU; 0 turns it off. Under load and when idle it never spins.
    #[arg(long, value_name = "USECS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub busy_poll: u64,
    /// Seconds a client may take to send its connection request.
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handshake_timeout: u64,
}

impl Cli {
    /// The configuration these arguments describe.
    pub fn config(&self) -> Config {
        Config {
            taps: self.taps.clone(),
            hub: self.hub,
            max_ports: self.max_ports,
            fdb_size: self.fdb_size as usize,
            fdb_age: Duration::from_secs(self.fdb_age),
            fdb_min_persistence: Duration::from_secs(self.fdb_min_persistence),
            handshake_timeout: Duration::from_secs(self.handshake_timeout),
            threads: usize::from(self.threads),
            busy_poll: Duration::from_micros(self.busy_poll),
            sock: self.sock.clone(),
            vde_dir: self.vde_dir.clone(),
            bess: self.bess.clone(),
            stream: self.stream.clone(),
            mode: self.mode,
            group: self.group.clone(),
        }
    }
}

/// The whole program: parse, log to stderr, run, map errors to sysexits
/// codes (64 usage, 69 socket in use, 71 OS error, 73 cannot create,
/// 77 permission, 78 configuration).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("UML_SWITCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match crate::run(cli.config()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
