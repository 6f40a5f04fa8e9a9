//! `uml-plug`: see the library for everything but the entry point.
fn main() -> std::process::ExitCode {
    uml_plug::main()
}
