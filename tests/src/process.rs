//! What the tests ask of the system beyond std: whether they run as root,
//! where a program is, and signals to the children they started. The
//! test crate's only `unsafe` code.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Whether the effective uid is 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `signal` to `pid` (a negative value names a process group).
/// Callers pass only ids of children they started and have not reaped, so
/// the ids cannot name unrelated processes.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Looks `program` up in `$PATH` like a shell would.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A binary that cargo built for this crate (`[[bin]]` targets sit beside
/// the test executables' `deps/` directory and are built before the tests).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test executable");
    let mut dir = exe.parent().expect("test executable has a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps/ has a parent");
    }
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{name} not found at {} (run the tests with cargo test -p uml-switch-tests)",
        binary.display()
    );
    binary
}
