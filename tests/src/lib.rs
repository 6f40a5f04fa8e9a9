//! Support code for the end-to-end tests of uml-switch: starting the daemon,
//! a test client that speaks the UML daemon protocol, network namespaces,
//! and User-Mode-Linux guests.

pub mod client;
pub mod daemon;
pub mod netns;
pub mod uml;
pub mod vde;
