//! The `uml-plug` cable tool, built inside the test crate so that cargo
//! rebuilds it before every test run (`CARGO_BIN_EXE_uml-plug-under-test`).
//! It runs exactly the code of the shipped binary.
fn main() -> std::process::ExitCode {
    uml_plug::main()
}
