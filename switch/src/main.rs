//! `uml-switch`: see the library for everything but argument parsing.
fn main() -> std::process::ExitCode {
    uml_switch::cli::main()
}
