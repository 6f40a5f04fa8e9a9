//! uml-switch daemon (work in progress).
pub mod cli;
