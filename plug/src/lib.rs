//! uml-plug: a cable between two network endpoints — uml-switch or
//! vde_switch ports, stdin/stdout (vde_plug's framing, so ssh can carry
//! it), a child process, a tap, UDP, VXLAN or a pcap file — with optional
//! link emulation (loss, delay, jitter, duplication, reordering,
//! corruption, rate, MTU) decided by a seeded, deterministic model.
//!
//! Each direction runs in its own thread: it receives a frame from one
//! endpoint, asks the direction's [`Impair`](uml_switch_proto::Impair) what
//! happens to it, and hands it (possibly later, twice, or altered) to the
//! other endpoint. The first side to end ends the cable.
#![forbid(unsafe_code)]

pub mod cli;
pub mod endpoint;
pub mod error;
pub mod pump;

pub use cli::main;
pub use error::PlugError;
