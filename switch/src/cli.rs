//! Command line (stub while the daemon is written).
pub fn main() -> std::process::ExitCode {
    eprintln!("uml-switch: not built yet");
    std::process::ExitCode::from(70)
}
