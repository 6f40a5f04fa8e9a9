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

/// A child process a test started: its exit status once reaped, and
/// signals sent only while it is unreaped (so its PID cannot name another
/// process). The switch, plug and vde2 wrappers are built on it.
#[derive(Debug)]
pub struct ChildProcess {
    child: std::process::Child,
    status: Option<std::process::ExitStatus>,
}

impl ChildProcess {
    /// Takes charge of `child`.
    pub fn new(child: std::process::Child) -> Self {
        ChildProcess {
            child,
            status: None,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (to take its piped stdin or stdout).
    pub fn child_mut(&mut self) -> &mut std::process::Child {
        &mut self.child
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `signal`, unless the process has already been reaped.
    pub fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        if self.try_status().is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        kill(pid, signal)
    }

    /// Waits up to `timeout` for the exit status; `None` if still running.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGKILL (to this PID only) and reap, if still running; the status.
    pub fn kill_and_reap(&mut self) -> Option<std::process::ExitStatus> {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}
