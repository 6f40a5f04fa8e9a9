//! `uml-plug`: cables between switches. Only the command-line skeleton
//! exists so far; the cable endpoints arrive with their own issue.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// Connect two network endpoints (not implemented yet).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The endpoints to join.
    endpoints: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!(
        "uml-plug: cables are not implemented yet (asked to join {:?}); use vde_plug meanwhile",
        cli.endpoints
    );
    ExitCode::from(69)
}
