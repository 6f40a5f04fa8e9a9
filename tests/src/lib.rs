//! Support code for the end-to-end tests of uml-switch: starting the daemon,
//! a test client that speaks the UML daemon protocol, a client of the bess
//! (SOCK_SEQPACKET) transport, vde2's `vde_plug`, network namespaces,
//! User-Mode-Linux guests and QEMU guests, and the `uml-plug` cable tool.

pub mod bess;
pub mod client;
pub mod daemon;
pub mod netns;
pub mod plug;
pub mod process;
pub mod qemu;
pub mod uml;
pub mod vde;
