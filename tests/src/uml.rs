//! Real User-Mode-Linux guests attached to a switch, for end-to-end tests.
//!
//! A [`Guest`] is a UML kernel (Debian's `user-mode-linux`, binary `linux`)
//! whose root file system is the host's `/` through hostfs, so it runs the
//! host's `ip` and `ping`.  Its init is a generated `/bin/sh` script in the
//! guest's own run directory; hostfs writes through, so that directory is
//! how host and guest talk:
//!
//! | file | written by | meaning |
//! |---|---|---|
//! | `init.sh` | host | the guest's init script |
//! | `console.log` | host (UML's stdout/stderr) | kernel log and init output |
//! | `ready` | guest | `ok UPTIME` once its interface (`eth0`, or `vec0` for [`GuestBuilder::bess`]) is up, or `error ...` |
//! | `ping.out`, `ping.rc` | guest | full output and exit code of the ping of its peer (`ping.rc` last) |
//! | `release` | host | barrier: the guest halts once it exists (or after a bounded wait) |
//! | other files | guest ([`GuestBuilder::script`]) | whatever the script writes; see [`Guest::wait_file`] |
//!
//! [`SwitchProcess`] runs the switch under test (or, for comparison, the old
//! `uml_switch` from uml-utilities, see [`SwitchImpl`]) optionally inside a
//! [`NetNs`].  The switch and its guests must share a network namespace:
//! UML's data socket has an abstract address, and those are per namespace.
//!
//! Every wait is bounded; failures panic with the tail of the guest console
//! and of the switch's log.  Dropping a [`Guest`] or a [`SwitchProcess`]
//! stops the processes this module started (and only those).

use crate::process::{find_program, is_root};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::NetNs;

/// How long a switch may take to create its control socket.
pub const SWITCH_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a guest may take from spawn to a configured `eth0`.  Guests
/// usually boot in 2-4 s; a loaded CI machine can take several times that.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a guest may take, once ready, to report its ping of the peer
/// (the peer may still be booting, see [`GuestBuilder::ping`]).
pub const PING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a released guest may take to halt before it is killed.
pub const HALT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a guest waits for its `release` barrier before halting anyway,
/// so that a guest orphaned by a killed test run still goes away.
pub const GUEST_HOLD: Duration = Duration::from_secs(120);

/// How long a process gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Polling interval of every wait in this module.
const POLL: Duration = Duration::from_millis(50);
/// Lines of each log quoted in failure messages.
const TAIL_LINES: usize = 40;

/// Per-process counter that makes UML umids unique.
static NEXT_UMID: AtomicU32 = AtomicU32::new(0);

/// Panics unless this process can boot UML guests in private namespaces:
/// it needs root and the `linux` (user-mode-linux), `ip` (iproute2), `ping`
/// (iputils-ping) and `busybox` programs.
///
/// Real-UML tests never skip silently: on a machine without them they fail
/// and point at `./run-tests.sh`, which installs the packages.
pub fn require_uml_environment() {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (effective uid 0)".to_string());
    }
    for program in ["linux", "ip", "ping", "busybox"] {
        if find_program(program).is_none() {
            missing.push(format!("`{program}` in PATH"));
        }
    }
    if missing.is_empty() {
        return;
    }
    let where_ = if std::env::var("CI").as_deref() == Ok("true") {
        "on CI"
    } else {
        "(these tests never skip silently)"
    };
    panic!(
        "real-UML tests need root and the user-mode-linux package; run ./run-tests.sh \
         which installs it. Missing {where_}: {}",
        missing.join(", ")
    );
}

/// Sends `sig` to `pid` (a negative value names a process group).
/// Returns whether the signal was delivered.
fn send_signal(pid: libc::pid_t, sig: libc::c_int) -> bool {
    crate::process::kill(pid, sig).is_ok()
}

/// The process group of `pid`, from `/proc/PID/stat` (field 5).
fn process_group(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// Polls `f` every [`POLL`] until it returns `Some` or `timeout` passes.
fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(POLL);
    }
}

/// Waits for `child` to exit, up to `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll_until(timeout, || child.try_wait().ok().flatten())
}

/// The last `lines` lines of the file at `path`, or a note why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) if bytes.is_empty() => format!("({} is empty)", path.display()),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Which switch program a [`SwitchProcess`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchImpl {
    /// Our `uml-switch` binary at this path:
    /// `uml-switch --sock CTL [--tap NAME]...`.
    UnderTest(PathBuf),
    /// The old `uml_switch` from Debian's uml-utilities, which speaks the same
    /// daemon protocol: `uml_switch -unix CTL [-tap NAME]` (one tap at most;
    /// it logs to stdout and leaves its socket file behind when killed).
    /// Useful to check the test harness itself against a known-good switch.
    Legacy,
    /// vde2's `vde_switch` (Debian's `vde-switch`), which serves the
    /// vde_switch directory layout only: `vde_switch -s DIR -n 256` (see
    /// [`SwitchProcess::start_vde`]); its stdin must stay open.  Useful to
    /// check the vde tests themselves against the reference implementation.
    Vde2,
}

impl SwitchImpl {
    /// `UnderTest(under_test)`, unless the environment variable
    /// `UML_E2E_SWITCH` is `uml_switch`, which selects [`SwitchImpl::Legacy`]
    /// (`UML_E2E_SWITCH=uml_switch cargo test --test uml_e2e`), or
    /// `vde_switch`, which selects [`SwitchImpl::Vde2`] (only for the tests
    /// of the vde directory layout: `UML_E2E_SWITCH=vde_switch cargo test
    /// --test uml_e2e vde`).
    pub fn from_env(under_test: impl Into<PathBuf>) -> SwitchImpl {
        match std::env::var("UML_E2E_SWITCH").as_deref() {
            Err(_) | Ok("") | Ok("uml-switch") => SwitchImpl::UnderTest(under_test.into()),
            Ok("uml_switch") => SwitchImpl::Legacy,
            Ok("vde_switch") => SwitchImpl::Vde2,
            Ok(other) => {
                panic!("UML_E2E_SWITCH={other:?}: expected `uml_switch`, `vde_switch` or unset")
            }
        }
    }

    /// The switch's command line (program first) for control socket `sock`
    /// and tap interfaces `taps`.
    pub fn command_line(&self, sock: &Path, taps: &[&str]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        match self {
            SwitchImpl::UnderTest(program) => {
                argv.push(program.into());
                argv.push("--sock".into());
                argv.push(sock.into());
                for tap in taps {
                    argv.push("--tap".into());
                    argv.push(tap.into());
                }
            }
            SwitchImpl::Legacy => {
                assert!(taps.len() <= 1, "uml_switch supports at most one tap");
                argv.push("uml_switch".into());
                argv.push("-unix".into());
                argv.push(sock.into());
                for tap in taps {
                    argv.push("-tap".into());
                    argv.push(tap.into());
                }
            }
            SwitchImpl::Vde2 => panic!(
                "vde_switch serves only the vde directory layout \
                 (SwitchProcess::start_vde); unset UML_E2E_SWITCH for this test"
            ),
        }
        argv
    }

    /// The switch's command line (program first) serving the vde_switch
    /// directory layout in `dir` (`dir/ctl` plus one data socket per port).
    pub fn vde_command_line(&self, dir: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        match self {
            SwitchImpl::UnderTest(program) => {
                argv.push(program.into());
                argv.push("--vde-dir".into());
                argv.push(dir.into());
            }
            SwitchImpl::Legacy => {
                panic!("uml_switch has no vde directory layout; unset UML_E2E_SWITCH for this test")
            }
            SwitchImpl::Vde2 => {
                argv.push("vde_switch".into());
                argv.push("-s".into());
                argv.push(dir.into());
                argv.push("-n".into());
                argv.push("256".into());
            }
        }
        argv
    }
}

/// A running switch daemon, optionally inside a [`NetNs`]; stopped on drop.
#[derive(Debug)]
pub struct SwitchProcess {
    child: Child,
    sock: PathBuf,
    /// `DIR` of a switch serving the vde directory layout.
    vde_dir: Option<PathBuf>,
    /// Kept open for switches that exit on EOF on stdin (vde_switch).
    _stdin: Option<ChildStdin>,
    log: PathBuf,
    argv: Vec<OsString>,
}

impl SwitchProcess {
    /// Starts `which` with control socket `sock` and tap ports `taps`
    /// (created in `netns`, or in the current namespace if `None`), logging
    /// stdout and stderr to `log`, and waits (at most
    /// [`SWITCH_START_TIMEOUT`]) until its control socket accepts
    /// connections.  Panics with the log if the switch exits or never gets
    /// ready.
    pub fn start(
        which: &SwitchImpl,
        netns: Option<&NetNs>,
        sock: &Path,
        taps: &[&str],
        log: &Path,
    ) -> SwitchProcess {
        let argv = which.command_line(sock, taps);
        SwitchProcess::launch(argv, netns, sock, None, log, false)
    }

    /// Like [`SwitchProcess::start`], with `extra` arguments appended to the
    /// command line (e.g. `["--bess", PATH]`); only for our switch.
    pub fn start_with(
        which: &SwitchImpl,
        netns: Option<&NetNs>,
        sock: &Path,
        taps: &[&str],
        extra: &[&str],
        log: &Path,
    ) -> SwitchProcess {
        assert!(
            extra.is_empty() || matches!(which, SwitchImpl::UnderTest(_)),
            "extra arguments {extra:?} are for uml-switch only; unset UML_E2E_SWITCH for this test"
        );
        let mut argv = which.command_line(sock, taps);
        argv.extend(extra.iter().map(OsString::from));
        SwitchProcess::launch(argv, netns, sock, None, log, false)
    }

    /// Starts `which` serving the vde_switch directory layout in `dir`
    /// (created by the switch; control socket `dir/ctl`, one data socket
    /// file per port) inside `netns` (or the current namespace), logging to
    /// `log`, and waits (at most [`SWITCH_START_TIMEOUT`]) until `dir/ctl`
    /// accepts connections.  Panics with the log if it does not.
    pub fn start_vde(
        which: &SwitchImpl,
        netns: Option<&NetNs>,
        dir: &Path,
        log: &Path,
    ) -> SwitchProcess {
        let argv = which.vde_command_line(dir);
        // vde_switch reads commands from stdin and exits on EOF there.
        let keep_stdin = *which == SwitchImpl::Vde2;
        SwitchProcess::launch(argv, netns, &dir.join("ctl"), Some(dir), log, keep_stdin)
    }

    fn launch(
        argv: Vec<OsString>,
        netns: Option<&NetNs>,
        sock: &Path,
        vde_dir: Option<&Path>,
        log: &Path,
        keep_stdin: bool,
    ) -> SwitchProcess {
        assert!(
            sock.as_os_str().len() < 108,
            "control socket path too long for sockaddr_un: {}",
            sock.display()
        );
        let mut cmd = match netns {
            Some(ns) => ns.exec_command(&argv[0]),
            None => Command::new(&argv[0]),
        };
        cmd.args(&argv[1..]);
        let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup switch log fd");
        let stdin = if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        cmd.stdin(stdin).stdout(out).stderr(err);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start switch {argv:?}: {e}"));
        let stdin = child.stdin.take();
        let mut switch = SwitchProcess {
            child,
            sock: sock.to_path_buf(),
            vde_dir: vde_dir.map(Path::to_path_buf),
            _stdin: stdin,
            log: log.to_path_buf(),
            argv,
        };
        let ready = poll_until(SWITCH_START_TIMEOUT, || {
            if let Ok(Some(status)) = switch.child.try_wait() {
                return Some(Err(status));
            }
            // A pathname socket is reachable from any namespace.
            UnixStream::connect(&switch.sock).ok().map(|_| Ok(()))
        });
        match ready {
            Some(Ok(())) => switch,
            Some(Err(status)) => switch.fail(format!(
                "switch exited ({status}) before its control socket {} accepted connections",
                switch.sock.display()
            )),
            None => switch.fail(format!(
                "switch's control socket {} did not accept connections within {:?}",
                switch.sock.display(),
                SWITCH_START_TIMEOUT
            )),
        }
    }

    /// The control socket path (what guests get in `eth0=daemon,MAC,unix,PATH`).
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// `DIR` of a switch serving the vde directory layout
    /// ([`SwitchProcess::start_vde`]): what `eth0=vde,DIR` is given.
    pub fn vde_dir(&self) -> Option<&Path> {
        self.vde_dir.as_deref()
    }

    /// The file that receives the switch's stdout and stderr.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The switch's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line the switch was started with.
    pub fn argv(&self) -> &[OsString] {
        &self.argv
    }

    /// Panics unless the switch is still running.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.fail(format!("switch exited unexpectedly ({status})"));
        }
    }

    /// Panics with `msg`, the switch's command line and the tail of its log.
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!(
            "{msg}\n--- switch {:?}, log {} (last {TAIL_LINES} lines) ---\n{}\n---",
            self.argv,
            self.log.display(),
            log_tail(&self.log, TAIL_LINES)
        );
    }

    /// Stops the switch: SIGTERM, then SIGKILL if it has not exited within a
    /// grace period.  Returns its exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            send_signal(pid, libc::SIGTERM);
        }
        if let Some(status) = wait_timeout(&mut self.child, TERM_GRACE) {
            return status;
        }
        eprintln!("switch {:?} ignored SIGTERM; killing it", self.argv);
        let _ = self.child.kill();
        self.child.wait().expect("wait for killed switch")
    }
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Summary of an iputils (or busybox) `ping` run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Round-trip times in milliseconds, if any reply arrived.
    pub rtt_ms: Option<Rtt>,
}

/// Round-trip times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rtt {
    /// Fastest round trip.
    pub min: f64,
    /// Mean round trip.
    pub avg: f64,
    /// Slowest round trip.
    pub max: f64,
}

impl fmt::Display for PingStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} replies", self.received, self.transmitted)?;
        if let Some(rtt) = self.rtt_ms {
            write!(
                f,
                ", rtt min/avg/max = {:.3}/{:.3}/{:.3} ms",
                rtt.min, rtt.avg, rtt.max
            )?;
        }
        Ok(())
    }
}

/// Parses the summary of `ping` output: the `N packets transmitted, M
/// received` line and, if present, the `rtt min/avg/max/mdev = a/b/c/d ms`
/// (iputils) or `round-trip min/avg/max = a/b/c ms` (busybox) line.
pub fn parse_ping(output: &str) -> Option<PingStats> {
    let counts = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = counts
        .split(',')
        .map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
    let transmitted = numbers.next()??;
    let received = numbers.next()??;
    let rtt_ms = output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| {
            let values: Vec<f64> = l
                .split('=')
                .nth(1)?
                .split_whitespace()
                .next()?
                .split('/')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            match values[..] {
                [min, avg, max, ..] => Some(Rtt { min, avg, max }),
                _ => None,
            }
        });
    Some(PingStats {
        transmitted,
        received,
        rtt_ms,
    })
}

/// What a guest reported about its ping of its peer.
#[derive(Debug, Clone)]
pub struct PingOutcome {
    /// `ping`'s exit code (iputils: 0 = replies received, 1 = none, 2 = error).
    pub exit_code: i32,
    /// `ping`'s full stdout and stderr.
    pub output: String,
    /// The parsed summary, if `ping` printed one.
    pub stats: Option<PingStats>,
}

impl PingOutcome {
    /// Whether ping exited 0 and every request got a reply.
    pub fn all_replied(&self) -> bool {
        self.exit_code == 0
            && self
                .stats
                .is_some_and(|s| s.transmitted > 0 && s.received == s.transmitted)
    }
}

/// Configures and boots a [`Guest`]; see [`Guest::builder`].
#[derive(Debug)]
pub struct GuestBuilder<'a> {
    name: String,
    ctl: PathBuf,
    /// If set, `eth0` uses UML's vde transport on this vde directory
    /// instead of the daemon transport on `ctl`.
    vde_dir: Option<PathBuf>,
    /// If set, the guest's interface is `vec0`, UML's vector transport
    /// `bess` connected to this SOCK_SEQPACKET socket, instead of `eth0`.
    bess: Option<PathBuf>,
    switch_log: Option<PathBuf>,
    netns: Option<&'a NetNs>,
    mac: Option<String>,
    addr: Option<String>,
    peer: Option<String>,
    ping_count: u32,
    mem: String,
    script: Option<String>,
}

impl<'a> GuestBuilder<'a> {
    /// Gives the interface this MAC address (`02:00:...`); default: UML picks a
    /// random one at every boot.
    pub fn mac(mut self, mac: &str) -> Self {
        assert!(
            mac.len() == 17 && mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':'),
            "bad MAC {mac:?}"
        );
        self.mac = Some(mac.to_string());
        self
    }

    /// Replaces `eth0` by `vec0`, UML's vector transport `bess` on the
    /// SOCK_SEQPACKET socket `path` (`vec0:transport=bess,dst=PATH[,mac=MAC]`,
    /// no `src=`: a bound client socket file would break the next boot).
    /// The guest connects when `vec0` goes up and closes when it goes down;
    /// [`GuestBuilder::addr`] and the ping then apply to `vec0`.
    pub fn bess(mut self, path: &Path) -> Self {
        self.bess = Some(path.to_path_buf());
        self
    }

    /// Gives the guest's interface this address in CIDR form, e.g.
    /// `10.199.1.1/24` (required).
    pub fn addr(mut self, cidr: &str) -> Self {
        self.addr = Some(checked_word(cidr));
        self
    }

    /// Makes the guest ping `peer` once its interface is up: it first waits
    /// (bounded) until the peer answers a single echo request, then runs
    /// `ping -c COUNT -W 2 PEER` and reports the result (see
    /// [`Guest::wait_ping`]).
    pub fn ping(mut self, peer: &str, count: u32) -> Self {
        self.peer = Some(checked_word(peer));
        self.ping_count = count;
        self
    }

    /// Runs the guest inside `netns` (which must be where the switch runs).
    pub fn netns(mut self, netns: &'a NetNs) -> Self {
        self.netns = Some(netns);
        self
    }

    /// Makes the guest run the `/bin/sh` commands `script` once its interface is
    /// up (after the ping, if any) and before it waits for its `release`
    /// barrier.  `$DIR` is the run directory (shared with the host, see
    /// [`Guest::wait_file`]); `PATH` is set and `/proc` is mounted.  The
    /// script must not halt the guest or wait unboundedly.
    pub fn script(mut self, script: &str) -> Self {
        self.script = Some(script.to_string());
        self
    }

    /// Guest RAM, UML syntax (default `64M`).
    pub fn mem(mut self, mem: &str) -> Self {
        self.mem = checked_word(mem);
        self
    }

    /// Writes the init script into a fresh run directory `parent/NAME` and
    /// starts the guest.  Does not wait for it; see [`Guest::wait_ready`].
    pub fn boot(self, parent: &Path) -> Guest {
        let addr = self.addr.clone().expect("GuestBuilder::addr is required");
        let run_dir = parent.join(&self.name);
        fs::create_dir_all(&run_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", run_dir.display()));
        let run_dir = run_dir
            .canonicalize()
            .unwrap_or_else(|e| panic!("canonicalize {}: {e}", run_dir.display()));
        let run_dir_str = checked_word(
            run_dir
                .to_str()
                .unwrap_or_else(|| panic!("non-UTF-8 run dir {}", run_dir.display())),
        );

        let script = run_dir.join("init.sh");
        fs::write(&script, self.init_script(&run_dir_str, &addr))
            .unwrap_or_else(|e| panic!("write {}: {e}", script.display()));
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", script.display()));
        let uml_dir = run_dir.join("uml");
        fs::create_dir_all(&uml_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", uml_dir.display()));

        let umid = format!(
            "{}-{}-{}",
            self.name,
            std::process::id(),
            NEXT_UMID.fetch_add(1, Ordering::Relaxed)
        );
        let ctl = checked_word(
            self.ctl
                .to_str()
                .unwrap_or_else(|| panic!("non-UTF-8 socket path {}", self.ctl.display())),
        );
        let args = [
            format!("umid={umid}"),
            format!("uml_dir={}", uml_dir.display()),
            format!("mem={}", self.mem),
            "root=/dev/root".into(),
            "rootfstype=hostfs".into(),
            "rootflags=/".into(),
            "rw".into(),
            format!("init={}", script.display()),
            "con=null".into(),
            "ssl=null".into(),
            "con0=null,fd:1".into(),
            self.net_option(&ctl),
        ];
        let mut cmd = match self.netns {
            Some(ns) => ns.exec_command("linux"),
            None => Command::new("linux"),
        };
        cmd.args(&args);
        let console = run_dir.join("console.log");
        let out =
            File::create(&console).unwrap_or_else(|e| panic!("create {}: {e}", console.display()));
        let err = out.try_clone().expect("dup console fd");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start UML guest {}: {e}", self.name));
        Guest {
            name: self.name,
            umid,
            run_dir,
            console,
            switch_log: self.switch_log,
            child,
            exit: None,
            started,
        }
    }

    /// The guest's network interface: `vec0` with [`GuestBuilder::bess`],
    /// else `eth0`.
    fn ifname(&self) -> &'static str {
        if self.bess.is_some() {
            "vec0"
        } else {
            "eth0"
        }
    }

    /// The kernel option creating the guest's interface: `vec0:...` with
    /// [`GuestBuilder::bess`], else [`GuestBuilder::eth0_option`].
    fn net_option(&self, ctl: &str) -> String {
        match &self.bess {
            None => self.eth0_option(ctl),
            Some(path) => {
                let path = checked_word(
                    path.to_str()
                        .unwrap_or_else(|| panic!("non-UTF-8 bess socket {}", path.display())),
                );
                match &self.mac {
                    Some(mac) => format!("vec0:transport=bess,dst={path},mac={mac}"),
                    None => format!("vec0:transport=bess,dst={path}"),
                }
            }
        }
    }

    /// The `eth0=...` kernel option: UML's daemon transport on `ctl`, or
    /// its vde transport (`eth0=vde,DIR[,MAC]`) for a vde directory.
    fn eth0_option(&self, ctl: &str) -> String {
        match &self.vde_dir {
            None => format!(
                "eth0=daemon,{},unix,{ctl}",
                self.mac.as_deref().unwrap_or("")
            ),
            Some(dir) => {
                let dir = checked_word(
                    dir.to_str()
                        .unwrap_or_else(|| panic!("non-UTF-8 vde directory {}", dir.display())),
                );
                match &self.mac {
                    Some(mac) => format!("eth0=vde,{dir},{mac}"),
                    None => format!("eth0=vde,{dir}"),
                }
            }
        }
    }

    /// The guest's init script.  `dir` is the run directory (as the guest
    /// sees it through hostfs: the same path).
    fn init_script(&self, dir: &str, addr: &str) -> String {
        let hold_ticks = GUEST_HOLD.as_millis() / 200;
        let ping = match &self.peer {
            None => String::new(),
            Some(peer) => format!(
                r#"
# Wait (bounded) until the peer answers, then measure.
tries=0
until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -ge 30 ] && break
    sleep 0.2
done
ping -c {count} -W 2 {peer} >"$DIR/ping.tmp" 2>&1
echo $? >"$DIR/ping.rc.tmp"
echo "E2E: ping {peer} exited $(cat "$DIR/ping.rc.tmp") after $tries failed probes"
cat "$DIR/ping.tmp"
mv "$DIR/ping.tmp" "$DIR/ping.out"
mv "$DIR/ping.rc.tmp" "$DIR/ping.rc"
"#,
                count = self.ping_count,
            ),
        };
        format!(
            r#"#!/bin/sh
# Init of UML guest {name}, generated by uml-switch-tests (tests/src/uml.rs).
# Runs in the guest with the host's / as root (hostfs); {dir} is shared.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
DIR={dir}
mount -t proc proc /proc
echo "E2E: init of {name} started"
ip link set lo up
if ip addr add {addr} dev {ifname} && ip link set {ifname} up; then
    echo "ok $(cut -d' ' -f1 /proc/uptime)" >"$DIR/ready.tmp"
else
    echo "error: cannot configure {ifname} (no connection to the switch?)" >"$DIR/ready.tmp"
fi
ip addr show >>"$DIR/ready.tmp" 2>&1
mv "$DIR/ready.tmp" "$DIR/ready"
echo "E2E: $(head -n 1 "$DIR/ready")"
{ping}
{script}
# Barrier: stay up (bounded) until the host is done with us.
ticks=0
while [ ! -e "$DIR/release" ] && [ "$ticks" -lt {hold_ticks} ]; do
    sleep 0.2
    ticks=$((ticks + 1))
done
echo "E2E: {name} halting"
busybox halt -f
"#,
            name = self.name,
            ifname = self.ifname(),
            script = self.script.as_deref().unwrap_or(""),
        )
    }
}

/// Returns `s` after checking it is safe as one shell word and one kernel
/// command-line word (no whitespace, quotes or shell metacharacters).
fn checked_word(s: &str) -> String {
    assert!(
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-:,+=@%".contains(c)),
        "{s:?} cannot be passed to a UML guest verbatim"
    );
    s.to_string()
}

/// A running UML guest; see the module documentation.  Dropping it releases
/// the guest, waits (bounded) for it to halt, kills it if needed and removes
/// its run directory.
#[derive(Debug)]
pub struct Guest {
    name: String,
    umid: String,
    run_dir: PathBuf,
    console: PathBuf,
    switch_log: Option<PathBuf>,
    child: Child,
    exit: Option<ExitStatus>,
    started: Instant,
}

impl Guest {
    /// Starts configuring a guest called `name` (also its run directory's
    /// name; keep it short and unique within the test) attached to `switch`.
    pub fn builder<'a>(name: &str, switch: &SwitchProcess) -> GuestBuilder<'a> {
        let mut builder = Guest::builder_for_socket(name, switch.sock());
        builder.switch_log = Some(switch.log().to_path_buf());
        builder
    }

    /// Like [`Guest::builder`], for a switch this module does not manage
    /// (e.g. vde2's `vde_switch`, whose control socket is `DIR/ctl`): the
    /// guest's `eth0` connects to the daemon-protocol control socket `ctl`.
    pub fn builder_for_socket<'a>(name: &str, ctl: &Path) -> GuestBuilder<'a> {
        GuestBuilder {
            name: checked_word(name),
            ctl: ctl.to_path_buf(),
            vde_dir: None,
            bess: None,
            switch_log: None,
            netns: None,
            mac: None,
            addr: None,
            peer: None,
            ping_count: 3,
            mem: "64M".into(),
            script: None,
        }
    }

    /// Like [`Guest::builder`], but the guest's `eth0` uses UML's vde
    /// transport (`eth0=vde,DIR,MAC`) on the vde directory of `switch`
    /// (started with [`SwitchProcess::start_vde`]).  UML runs `vde_plug`
    /// as its helper for that, so the host needs Debian's `vdeplug`.
    pub fn builder_vde<'a>(name: &str, switch: &SwitchProcess) -> GuestBuilder<'a> {
        let dir = switch
            .vde_dir()
            .expect("Guest::builder_vde needs a switch started with SwitchProcess::start_vde");
        let mut builder = Guest::builder_for_vde_dir(name, dir);
        builder.switch_log = Some(switch.log().to_path_buf());
        builder
    }

    /// Like [`Guest::builder_vde`], for a vde directory `dir` served by a
    /// switch this module does not manage.
    pub fn builder_for_vde_dir<'a>(name: &str, dir: &Path) -> GuestBuilder<'a> {
        let mut builder = Guest::builder_for_socket(name, &dir.join("ctl"));
        builder.vde_dir = Some(dir.to_path_buf());
        builder
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's UML umid (unique among running guests).
    pub fn umid(&self) -> &str {
        &self.umid
    }

    /// The guest's run directory on the host.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The guest's console log (kernel messages and init output).
    pub fn console(&self) -> &Path {
        &self.console
    }

    /// Waits (at most [`BOOT_TIMEOUT`]) until the guest has configured
    /// `eth0` and returns the time since it was started.  Panics if the guest
    /// exits first, reports an error (e.g. no `eth0` because the switch was
    /// not reachable at boot) or is too slow.
    pub fn wait_ready(&mut self) -> Duration {
        let ready = self.wait_for_file("ready", BOOT_TIMEOUT);
        if !ready.starts_with("ok ") {
            self.fail(format!(
                "guest {} could not configure its interface: {}",
                self.name,
                ready.trim()
            ));
        }
        self.started.elapsed()
    }

    /// Waits (at most [`PING_TIMEOUT`]) for the result of the ping the guest
    /// was configured with ([`GuestBuilder::ping`]).
    pub fn wait_ping(&mut self) -> PingOutcome {
        let rc = self.wait_for_file("ping.rc", PING_TIMEOUT);
        let exit_code = rc
            .trim()
            .parse()
            .unwrap_or_else(|_| self.fail(format!("guest {}: bad ping.rc {rc:?}", self.name)));
        let output = fs::read_to_string(self.run_dir.join("ping.out"))
            .unwrap_or_else(|e| self.fail(format!("guest {}: ping.out: {e}", self.name)));
        let stats = parse_ping(&output);
        PingOutcome {
            exit_code,
            output,
            stats,
        }
    }

    /// Waits (at most `timeout`) until the guest writes `file` in its run
    /// directory (e.g. a result of its [`GuestBuilder::script`]) and returns
    /// its contents.  Panics if the guest exits first or is too slow.  The
    /// guest should write the file under another name and rename it.
    pub fn wait_file(&mut self, file: &str, timeout: Duration) -> String {
        self.wait_for_file(file, timeout)
    }

    /// Opens the barrier: the guest halts once it has done its work.
    pub fn release(&self) {
        let path = self.run_dir.join("release");
        if let Err(e) = fs::write(&path, b"") {
            eprintln!("warning: cannot create {}: {e}", path.display());
        }
    }

    /// Releases the guest and waits (at most [`HALT_TIMEOUT`]) for it to
    /// halt.  Panics if it does not.
    pub fn halt(&mut self) -> ExitStatus {
        self.release();
        match self.poll_exit(HALT_TIMEOUT) {
            Some(status) => status,
            None => self.fail(format!(
                "guest {} did not halt within {HALT_TIMEOUT:?} of its release",
                self.name
            )),
        }
    }

    /// The tail of the guest console and of the switch log, for messages.
    pub fn diagnostics(&self) -> String {
        let mut text = format!(
            "--- guest {} (umid {}) console {} (last {TAIL_LINES} lines) ---\n{}\n",
            self.name,
            self.umid,
            self.console.display(),
            log_tail(&self.console, TAIL_LINES)
        );
        if let Some(log) = &self.switch_log {
            text.push_str(&format!(
                "--- switch log {} (last {TAIL_LINES} lines) ---\n{}\n",
                log.display(),
                log_tail(log, TAIL_LINES)
            ));
        }
        text.push_str("---");
        text
    }

    /// Panics with `msg` and [`Guest::diagnostics`].
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!("{msg}\n{}", self.diagnostics());
    }

    /// Waits until the guest writes `file` in its run directory, returning
    /// its contents; panics if the guest exits first or `timeout` passes.
    fn wait_for_file(&mut self, file: &str, timeout: Duration) -> String {
        let path = self.run_dir.join(file);
        let found = poll_until(timeout, || {
            // Guest files are written under a temporary name and renamed.
            if let Ok(text) = fs::read_to_string(&path) {
                return Some(Ok(text));
            }
            self.try_exit().map(Err)
        });
        match found {
            Some(Ok(text)) => text,
            Some(Err(status)) => self.fail(format!(
                "guest {} exited ({status}) before writing {}",
                self.name,
                path.display()
            )),
            None => self.fail(format!(
                "guest {} did not write {} within {timeout:?}",
                self.name,
                path.display()
            )),
        }
    }

    /// The guest's exit status if it has exited (reaping it).
    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    fn poll_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_exit())
    }

    /// Sends `sig` to the UML kernel process and to its process group (UML
    /// moves itself and its helpers into a group of its own), but to the
    /// group only if its id is our child's pid.  Must not be called after
    /// the child has been reaped.
    fn signal_group(&self, sig: libc::c_int) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        if process_group(pid) == Some(pid) {
            send_signal(-pid, sig);
        }
        send_signal(pid, sig);
    }

    /// Makes sure the guest process is gone: release, wait, SIGTERM, SIGKILL.
    fn stop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        self.release();
        if self.poll_exit(HALT_TIMEOUT).is_some() {
            return;
        }
        eprintln!("guest {} did not halt; sending SIGTERM", self.name);
        self.signal_group(libc::SIGTERM);
        if self.poll_exit(TERM_GRACE).is_some() {
            return;
        }
        eprintln!("guest {} ignored SIGTERM; sending SIGKILL", self.name);
        self.signal_group(libc::SIGKILL);
        self.exit = self.child.wait().ok();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = fs::remove_dir_all(&self.run_dir) {
            eprintln!("warning: cannot remove {}: {e}", self.run_dir.display());
        }
    }
}

/// A guest script that pings every address in `peers` (3 echo requests
/// each, after waiting, bounded, for the peer to answer at all) and leaves
/// `ping-ADDR.out` and `ping-ADDR.rc` in its run directory.
pub fn ping_all_script(peers: &[&str]) -> String {
    let mut script = String::new();
    for peer in peers {
        script.push_str(&format!(
            r#"
tries=0
until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -ge 60 ] && break
    sleep 0.2
done
ping -c 3 -W 2 {peer} >"$DIR/ping-{peer}.tmp" 2>&1
echo $? >"$DIR/ping-{peer}.rc.tmp"
mv "$DIR/ping-{peer}.tmp" "$DIR/ping-{peer}.out"
mv "$DIR/ping-{peer}.rc.tmp" "$DIR/ping-{peer}.rc"
echo "E2E: ping {peer} exited $(cat "$DIR/ping-{peer}.rc")"
"#
        ));
    }
    script
}

/// Waits for the report of `guest`'s ping of `peer` written by
/// [`ping_all_script`], prints it, and fails unless every request was answered.
pub fn expect_scripted_ping(guest: &mut Guest, peer: &str) {
    let rc = guest.wait_file(&format!("ping-{peer}.rc"), Duration::from_secs(90));
    let output = std::fs::read_to_string(guest.run_dir().join(format!("ping-{peer}.out")))
        .unwrap_or_default();
    match parse_ping(&output) {
        Some(stats) => println!("{} -> {peer}: {stats}", guest.name()),
        None => println!("{} -> {peer}: no ping summary", guest.name()),
    }
    if rc.trim() != "0" {
        guest.fail(format!(
            "guest {} could not ping {peer} (exit code {}):\n{output}",
            guest.name(),
            rc.trim()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_summary() {
        let out = "PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.\n\
                   64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=0.884 ms\n\n\
                   --- 10.0.0.1 ping statistics ---\n\
                   3 packets transmitted, 3 received, 0% packet loss, time 2004ms\n\
                   rtt min/avg/max/mdev = 0.292/0.517/0.884/0.261 ms\n";
        let stats = parse_ping(out).unwrap();
        assert_eq!((stats.transmitted, stats.received), (3, 3));
        assert_eq!(
            stats.rtt_ms,
            Some(Rtt {
                min: 0.292,
                avg: 0.517,
                max: 0.884
            })
        );
    }

    #[test]
    fn parses_busybox_and_failed_summaries() {
        let bb = "3 packets transmitted, 2 packets received, 33% packet loss\n\
                  round-trip min/avg/max = 0.100/0.200/0.300 ms\n";
        let stats = parse_ping(bb).unwrap();
        assert_eq!((stats.transmitted, stats.received), (3, 2));
        assert_eq!(stats.rtt_ms.unwrap().max, 0.3);

        let lost = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2040ms\n";
        let stats = parse_ping(lost).unwrap();
        assert_eq!(
            (stats.transmitted, stats.received, stats.rtt_ms),
            (3, 0, None)
        );
        assert!(parse_ping("connect: Network is unreachable\n").is_none());
    }

    #[test]
    fn legacy_and_our_command_lines() {
        let sock = Path::new("/tmp/x/ctl");
        let ours = SwitchImpl::UnderTest("/bin/uml-switch".into());
        assert_eq!(
            ours.command_line(sock, &["t0"]),
            ["/bin/uml-switch", "--sock", "/tmp/x/ctl", "--tap", "t0"].map(OsString::from)
        );
        assert_eq!(
            SwitchImpl::Legacy.command_line(sock, &[]),
            ["uml_switch", "-unix", "/tmp/x/ctl"].map(OsString::from)
        );
    }

    #[test]
    fn vde_command_lines() {
        let dir = Path::new("/tmp/x/vde");
        let ours = SwitchImpl::UnderTest("/bin/uml-switch".into());
        assert_eq!(
            ours.vde_command_line(dir),
            ["/bin/uml-switch", "--vde-dir", "/tmp/x/vde"].map(OsString::from)
        );
        assert_eq!(
            SwitchImpl::Vde2.vde_command_line(dir),
            ["vde_switch", "-s", "/tmp/x/vde", "-n", "256"].map(OsString::from)
        );
    }

    #[test]
    fn eth0_options_for_both_transports() {
        let daemon =
            Guest::builder_for_socket("g", Path::new("/tmp/x/ctl")).mac("02:00:00:00:00:01");
        assert_eq!(
            daemon.eth0_option("/tmp/x/ctl"),
            "eth0=daemon,02:00:00:00:00:01,unix,/tmp/x/ctl"
        );
        let vde = Guest::builder_for_vde_dir("g", Path::new("/tmp/x/vde"));
        assert_eq!(vde.eth0_option("/tmp/x/vde/ctl"), "eth0=vde,/tmp/x/vde");
        let vde = vde.mac("02:00:00:00:00:02");
        assert_eq!(
            vde.eth0_option("/tmp/x/vde/ctl"),
            "eth0=vde,/tmp/x/vde,02:00:00:00:00:02"
        );
        assert_eq!(vde.ifname(), "eth0");
        let bess = Guest::builder_for_socket("g", Path::new("/tmp/x/ctl"))
            .bess(Path::new("/tmp/x/bess.sock"));
        assert_eq!(bess.ifname(), "vec0");
        assert_eq!(
            bess.net_option("/tmp/x/ctl"),
            "vec0:transport=bess,dst=/tmp/x/bess.sock"
        );
        let bess = bess.mac("02:00:00:00:00:03");
        assert_eq!(
            bess.net_option("/tmp/x/ctl"),
            "vec0:transport=bess,dst=/tmp/x/bess.sock,mac=02:00:00:00:00:03"
        );
    }
}
