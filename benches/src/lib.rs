//! Benchmarks of uml-switch; see `benches/` for the criterion suites.

pub mod loadgen;
