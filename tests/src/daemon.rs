//! Running the switch daemon under test as a child process.
//!
//! [`SwitchProcess`] starts the `uml-switch-under-test` binary (built in this
//! crate from the same library as the shipped `uml-switch`) in a fresh
//! temporary directory, with its stdout and stderr captured to files there so
//! that failure messages can include what the daemon said. Dropping it sends
//! SIGTERM to that one PID, waits a bounded time, then kills it.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::ChildProcess;

/// Name of the switch binary target built by this crate.
pub const SWITCH_BINARY_NAME: &str = "uml-switch-under-test";

/// Path of the switch binary under test.
///
/// `env!("CARGO_BIN_EXE_uml-switch-under-test")` exists only while an
/// integration test is compiled, not for this library, so the path is found
/// the way cargo lays it out: test executables live in `target/<profile>/deps/`,
/// binaries in `target/<profile>/`. Cargo builds the binary before running the
/// integration tests of this crate.
pub fn switch_binary() -> PathBuf {
    crate::process::built_binary(SWITCH_BINARY_NAME)
}

/// How long [`SwitchProcess::start`] waits for the control socket to accept.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `Drop` waits after SIGTERM before resorting to SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Polling interval while waiting for readiness or exit.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Exit code of the switch when another live switch already listens on its path.
pub const EXIT_ALREADY_RUNNING: i32 = 69;

/// Exit code of the switch on command-line usage errors.
pub const EXIT_USAGE: i32 = 64;

/// A running switch daemon, owned by the test.
pub struct SwitchProcess {
    process: ChildProcess,
    /// Kept open so that a switch watching stdin never sees EOF on it.
    _stdin: Option<ChildStdin>,
    /// Holds the logs and, for [`SwitchProcess::start`], the control socket.
    dir: TempDir,
    ctl_path: PathBuf,
    /// `DIR` of a switch started with `--vde-dir DIR`.
    vde_dir: Option<PathBuf>,
}

impl SwitchProcess {
    /// Starts a switch on `<fresh temp dir>/ctl` with the extra arguments
    /// `args` (e.g. `["--hub"]`), and waits until its control socket accepts
    /// connections. Panics, with the daemon's logs, if it does not.
    pub fn start(args: &[&str]) -> SwitchProcess {
        let dir = tempfile::Builder::new()
            .prefix("uml-switch-test.")
            .tempdir()
            .expect("create temp dir for the switch");
        let ctl_path = dir.path().join("ctl");
        let mut switch = Self::spawn_in(dir, &ctl_path, args).expect("spawn the switch");
        if let Err(err) = switch.wait_ready(READY_TIMEOUT) {
            panic!("switch did not become ready: {err}\n{}", switch.logs());
        }
        switch
    }

    /// Starts a switch serving the vde_switch directory layout in
    /// `DIR = <fresh temp dir>/vde` (`--vde-dir DIR`, no `--sock`, so the
    /// control socket is `DIR/ctl`) with the extra arguments `args`, and
    /// waits until `DIR/ctl` accepts connections. Panics, with the daemon's
    /// logs, if it does not.
    pub fn start_vde(args: &[&str]) -> SwitchProcess {
        let dir = tempfile::Builder::new()
            .prefix("uml-switch-test.")
            .tempdir()
            .expect("create temp dir for the switch");
        let vde_dir = dir.path().join("vde");
        let mut switch = Self::spawn_vde_in(dir, &vde_dir, args).expect("spawn the switch");
        if let Err(err) = switch.wait_ready(READY_TIMEOUT) {
            panic!("switch did not become ready: {err}\n{}", switch.logs());
        }
        switch
    }

    /// Spawns a switch with `--vde-dir vde_dir` plus `args` (no `--sock`),
    /// without waiting for it to be ready. Its logs go to a fresh temporary
    /// directory.
    pub fn spawn_vde(vde_dir: &Path, args: &[&str]) -> io::Result<SwitchProcess> {
        let dir = tempfile::Builder::new()
            .prefix("uml-switch-test.")
            .tempdir()?;
        Self::spawn_vde_in(dir, vde_dir, args)
    }

    fn spawn_vde_in(dir: TempDir, vde_dir: &Path, args: &[&str]) -> io::Result<SwitchProcess> {
        let mut argv = vec![OsString::from("--vde-dir"), vde_dir.into()];
        argv.extend(args.iter().map(OsString::from));
        let mut switch = Self::spawn_with(dir, &vde_dir.join("ctl"), &argv)?;
        switch.vde_dir = Some(vde_dir.to_owned());
        Ok(switch)
    }

    /// Spawns a switch whose control socket is `ctl_path` (which may live
    /// anywhere, e.g. another switch's path), without waiting for it to be
    /// ready. Its logs go to a fresh temporary directory.
    pub fn spawn(ctl_path: &Path, args: &[&str]) -> io::Result<SwitchProcess> {
        let dir = tempfile::Builder::new()
            .prefix("uml-switch-test.")
            .tempdir()?;
        Self::spawn_in(dir, ctl_path, args)
    }

    fn spawn_in(dir: TempDir, ctl_path: &Path, args: &[&str]) -> io::Result<SwitchProcess> {
        let mut argv = vec![OsString::from("--sock"), ctl_path.into()];
        argv.extend(args.iter().map(OsString::from));
        Self::spawn_with(dir, ctl_path, &argv)
    }

    /// Like [`SwitchProcess::start`], but the switch runs as `uid`:`gid`
    /// (the test must be root), in a temporary directory that user owns.
    pub fn start_as(uid: u32, gid: u32, args: &[&str]) -> SwitchProcess {
        let dir = tempfile::Builder::new()
            .prefix("uml-switch-test.")
            .tempdir()
            .expect("create temp dir for the switch");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .expect("give the switch's directory to its user (the test needs root)");
        let ctl_path = dir.path().join("ctl");
        let mut argv = vec![OsString::from("--sock"), ctl_path.clone().into()];
        argv.extend(args.iter().map(OsString::from));
        let mut switch = Self::spawn_with_user(dir, &ctl_path, &argv, Some((uid, gid)))
            .expect("spawn the switch");
        if let Err(err) = switch.wait_ready(READY_TIMEOUT) {
            panic!("switch did not become ready: {err}\n{}", switch.logs());
        }
        switch
    }

    /// Spawns the switch with exactly `argv`; `ctl_path` is where it will
    /// listen.
    fn spawn_with(dir: TempDir, ctl_path: &Path, argv: &[OsString]) -> io::Result<SwitchProcess> {
        Self::spawn_with_user(dir, ctl_path, argv, None)
    }

    fn spawn_with_user(
        dir: TempDir,
        ctl_path: &Path,
        argv: &[OsString],
        user: Option<(u32, u32)>,
    ) -> io::Result<SwitchProcess> {
        let stdout = File::create(dir.path().join("stdout.log"))?;
        let stderr = File::create(dir.path().join("stderr.log"))?;
        let mut command = Command::new(switch_binary());
        if let Some((uid, gid)) = user {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
        }
        let mut child = command
            .args(argv)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(SwitchProcess {
            process: ChildProcess::new(child),
            _stdin: stdin,
            dir,
            ctl_path: ctl_path.to_owned(),
            vde_dir: None,
        })
    }

    /// Waits until a `connect()` to the control socket succeeds. Fails early
    /// if the process exits, and after `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Err(format!("switch exited before listening: {status}"));
            }
            match UnixStream::connect(&self.ctl_path) {
                Ok(_probe) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    return Err(format!(
                        "connect({}) still fails after {timeout:?}: {err}",
                        self.ctl_path.display()
                    ));
                }
                Err(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Path of the control socket (what UML is given as CTLPATH).
    pub fn ctl_path(&self) -> &Path {
        &self.ctl_path
    }

    /// `DIR` of a switch started with `--vde-dir DIR`
    /// ([`SwitchProcess::start_vde`], [`SwitchProcess::spawn_vde`]).
    pub fn vde_dir(&self) -> Option<&Path> {
        self.vde_dir.as_deref()
    }

    /// The temporary directory holding the logs (and the default socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ID of the switch.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything the switch wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Everything the switch wrote to stdout so far.
    pub fn stdout_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Both logs, labelled, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- switch stderr ---\n{}--- switch stdout ---\n{}---",
            self.stderr_log(),
            self.stdout_log()
        )
    }

    /// Number of open file descriptors of the switch (`/proc/PID/fd`).
    pub fn open_fd_count(&self) -> io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the switch, unless it has
    /// already been reaped (so the PID cannot belong to another process).
    pub fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        self.process.signal(signal)
    }

    /// Waits up to `timeout` for the switch to exit; `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM)
            .expect("send SIGTERM to the switch");
        self.wait_exit(timeout)
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    fn try_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let _ = self.signal(libc::SIGTERM);
        if self.wait_exit(TERM_GRACE).is_none() {
            self.process.kill_and_reap();
        }
    }
}
