//! The `uml-switch` daemon, built inside the test crate so that cargo
//! rebuilds it before every test run (`CARGO_BIN_EXE_uml-switch-under-test`).
//! It runs exactly the code of the shipped binary.
fn main() -> std::process::ExitCode {
    uml_switch::cli::main()
}
