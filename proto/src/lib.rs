//! The sans-I/O core of uml-switch.
//!
//! This crate holds everything about the switch that can be decided from
//! bytes and a clock value alone:
//!
//! - [`wire`]: the daemon protocol's connection request (`request_v3`) and
//!   the 110-byte `sockaddr_un` that travels in it;
//! - [`frame`]: a validated, zero-copy view of an Ethernet frame;
//! - [`fdb`]: the forwarding database (MAC learning with ageing, move
//!   hysteresis and a size cap);
//! - [`switch`]: the forwarding core, [`Switch::ingress`], which turns one
//!   received frame into a [`Verdict`];
//! - [`stats`]: plain per-port counters.
//!
//! Nothing here opens a socket, reads the clock or spawns a thread: the
//! caller passes the time in as a [`Timestamp`]. Tests drive the core with
//! byte vectors.
//!
//! ```
//! use uml_switch_proto::{Switch, SwitchConfig, Timestamp, Verdict, PortId};
//!
//! let mut sw = Switch::new(SwitchConfig::default());
//! let (a, b) = (PortId(0), PortId(1));
//! sw.add_port(a).unwrap();
//! sw.add_port(b).unwrap();
//! let mut frame = [0u8; 60];
//! frame[..6].copy_from_slice(&[0xff; 6]); // broadcast
//! frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
//! assert_eq!(sw.ingress(Timestamp::ZERO, a, &frame), Verdict::Flood);
//! ```
#![forbid(unsafe_code)]

pub mod fdb;
pub mod frame;
pub mod impair;
pub mod mac;
pub mod pcap;
pub mod port_numbers;
pub mod stats;
pub mod switch;
pub mod time;
pub mod wire;

pub use fdb::{Fdb, FdbConfig};
pub use frame::{EthFrame, FrameError, MAX_FRAME_LEN, MIN_FRAME_LEN};
pub use impair::{DropCause, Fate, Impair, ImpairConfig, ImpairStats};
pub use mac::MacAddr;
pub use pcap::PcapWriter;
pub use port_numbers::PortNumbers;
pub use stats::{DropReason, PortStats};
pub use switch::{Announcement, PortId, Switch, SwitchConfig, SwitchError, SwitchStats, Verdict};
pub use time::Timestamp;
