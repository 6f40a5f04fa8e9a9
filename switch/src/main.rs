fn main() -> std::process::ExitCode {
    uml_switch::cli::main()
}
