//! Private network namespaces for tests that need real interfaces.
//!
//! [`NetNs::new`] creates a uniquely named namespace with `ip netns add`
//! (the name contains the test process's pid and a counter, so tests running
//! in parallel, in one process or several, never clash), brings its loopback
//! interface up, and deletes it again when dropped.  Everything a test runs
//! through [`NetNs::exec_command`] sees only the interfaces of that
//! namespace, so test traffic cannot leave the machine.
//!
//! Needs root (or `CAP_SYS_ADMIN` + `CAP_NET_ADMIN`) and iproute2's `ip`.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Per-process counter that makes namespace names unique.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace created for one test; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named `PREFIX-PID-N` and brings `lo` up in it.
    ///
    /// Panics (this is test support code) if `ip netns add` fails, with the
    /// command's stderr in the message.
    pub fn new(prefix: &str) -> NetNs {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{id}", std::process::id());
        // A namespace left behind by a killed earlier run whose pid happened
        // to be ours would make `ip netns add` fail: remove it first.
        if std::path::Path::new("/run/netns").join(&name).exists() {
            let _ = quiet(Command::new("ip").args(["netns", "del", &name])).output();
        }
        check(
            &format!("ip netns add {name}"),
            run_output(Command::new("ip").args(["netns", "add", &name])),
        );
        let ns = NetNs { name };
        ns.ip_ok(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Command`] that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments and stdio as usual.
    ///
    /// `ip netns exec` execs the program without forking, so the spawned
    /// child's pid is the program's pid and signals sent to it reach the
    /// program itself.
    pub fn exec_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `args[0]` with arguments `args[1..]` inside the namespace and
    /// waits for it; stdin is `/dev/null`, stdout and stderr are captured.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let (program, rest) = args.split_first().expect("NetNs::run needs a program");
        run_output(self.exec_command(program).args(rest))
    }

    /// Runs `ip -n NAME ARGS...` (iproute2 acting on this namespace) and
    /// returns its output, successful or not.
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_output(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Like [`NetNs::ip`], but panics with the command's stderr unless it
    /// succeeded; returns its stdout.
    pub fn ip_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        let out = check(
            &format!("ip -n {} {}", self.name, shown.join(" ")),
            self.ip(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the namespace contains a network interface called `ifname`.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).status.success()
    }

    /// Waits until the namespace contains interface `ifname` (e.g. a tap a
    /// switch creates), polling for at most `timeout`.  Returns whether it
    /// appeared.
    pub fn wait_for_link(&self, ifname: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.has_link(ifname) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Best effort: a namespace still used by a process lives on until
        // that process exits, but its name is gone either way.
        let out = run_output(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() {
            eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Sets stdin to `/dev/null` and captures stdout/stderr.
fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
}

/// Runs `cmd` to completion; panics only if it cannot be started at all.
fn run_output(cmd: &mut Command) -> Output {
    quiet(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Returns `out` if its command succeeded, else panics with its stderr.
fn check(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "`{what}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    out
}
