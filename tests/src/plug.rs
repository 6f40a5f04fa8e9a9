//! Running `uml-plug`, the cable tool, in tests, and what its tests need
//! around it: stdio cables made of two OS pipes (what vde2's `dpipe`
//! does), veth links between namespaces, guest scripts that ping again
//! after the cable has been swapped, and a pcap reader.
//!
//! [`Plug`] starts the `uml-plug-under-test` binary (built in this crate from
//! the same library as the shipped `uml-plug`), optionally inside a
//! [`NetNs`] (a `uml://` endpoint must run in the namespace of its switch:
//! the switch's data socket has an abstract address).  Its stderr (and its
//! stdout, unless that is the network) goes to a log file.  Dropping it
//! sends SIGTERM to that one PID, waits a bounded time, then kills it; if
//! the test is panicking, the log is printed first.

use crate::process::ChildProcess;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::uml::{log_tail, Guest};
use crate::vde::find_program;

/// Name of the plug binary target built by this crate.
pub const PLUG_BINARY_NAME: &str = "uml-plug-under-test";

/// Environment variable naming another program to run instead of the
/// plug under test (e.g. an installed `uml-plug`).
pub const PLUG_OVERRIDE_ENV: &str = "UML_PLUG";

/// Exit code of `uml-plug` when a switch is unavailable (socket missing or
/// refusing), as sysexits' `EX_UNAVAILABLE`.
pub const EXIT_UNAVAILABLE: i32 = 69;

/// How long `Drop` waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Polling interval of the waits in this module.
const POLL: Duration = Duration::from_millis(20);
/// Lines of the plug's log quoted in failure messages.
const TAIL_LINES: usize = 40;

/// Path of the plug binary under test: `$UML_PLUG` if set, else
/// `uml-plug-under-test` next to the test executable's `deps/` directory
/// (`env!("CARGO_BIN_EXE_...")` exists only for integration tests, not for
/// this library; cargo builds the binary before running them).
pub fn plug_binary() -> PathBuf {
    if let Some(program) = std::env::var_os(PLUG_OVERRIDE_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(program);
    }
    crate::process::built_binary(PLUG_BINARY_NAME)
}

/// `uml://PATH` for a daemon-protocol control socket.
pub fn uml_url(ctl: &Path) -> String {
    format!("uml://{}", utf8(ctl))
}

/// `vde://DIR` for a vde_switch-style directory.
pub fn vde_url(dir: &Path) -> String {
    format!("vde://{}", utf8(dir))
}

/// `pcap://FILE`.
pub fn pcap_url(file: &Path) -> String {
    format!("pcap://{}", utf8(file))
}

/// `cmd://COMMAND` running `argv` through `sh -c`, every word quoted.
pub fn cmd_url<S: AsRef<str>>(argv: &[S]) -> String {
    let words: Vec<String> = argv.iter().map(|w| shell_quote(w.as_ref())).collect();
    format!("cmd://{}", words.join(" "))
}

/// `vxlan://REMOTE?vni=VNI&local=LOCAL` (default port 4789 both ends).
pub fn vxlan_url(remote: &str, vni: u32, local: &str) -> String {
    format!("vxlan://{remote}?vni={vni}&local={local}")
}

/// `s` as one `sh` word (single quotes; embedded ones escaped).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:,+=@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn utf8(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", path.display()))
}

/// What a [`Plug`]'s stdin and stdout are.
enum StdioMode {
    /// stdin `/dev/null`, stdout into the log (two endpoints given).
    Detached,
    /// Both piped to the test ([`Plug::take_stdin`], [`Plug::take_stdout`]).
    Piped,
    /// Given file descriptors (one end of a pipe each).
    Fds(OwnedFd, OwnedFd),
}

/// A running `uml-plug`, owned by the test.
pub struct Plug {
    process: ChildProcess,
    argv: Vec<OsString>,
    log: PathBuf,
}

impl Plug {
    /// Starts `uml-plug ARGS...` inside `netns` (or the current namespace)
    /// with stdin `/dev/null` and stdout and stderr appended to `log`.
    /// Does not wait for it to attach.
    pub fn spawn(netns: Option<&NetNs>, args: &[&str], log: &Path) -> Plug {
        Plug::launch(netns, args, log, StdioMode::Detached)
    }

    /// Like [`Plug::spawn`], but stdin and stdout are pipes to the test
    /// (the network, in the 2-byte length framing, when one endpoint is
    /// given): see [`Plug::take_stdin`] and [`Plug::take_stdout`].
    pub fn spawn_piped(netns: Option<&NetNs>, args: &[&str], log: &Path) -> Plug {
        Plug::launch(netns, args, log, StdioMode::Piped)
    }

    /// Starts two one-endpoint plugs `uml-plug A_ARGS...` and
    /// `uml-plug B_ARGS...` whose stdin and stdout are cross-connected by
    /// two OS pipes, as `dpipe` (or ssh) would: a stdio cable.
    pub fn spawn_cable(
        netns: Option<&NetNs>,
        a_args: &[&str],
        a_log: &Path,
        b_args: &[&str],
        b_log: &Path,
    ) -> (Plug, Plug) {
        let (a_to_b_read, a_to_b_write) = pipe().expect("create a pipe");
        let (b_to_a_read, b_to_a_write) = pipe().expect("create a pipe");
        let a = Plug::launch(
            netns,
            a_args,
            a_log,
            StdioMode::Fds(b_to_a_read, a_to_b_write),
        );
        let b = Plug::launch(
            netns,
            b_args,
            b_log,
            StdioMode::Fds(a_to_b_read, b_to_a_write),
        );
        (a, b)
    }

    fn launch(netns: Option<&NetNs>, args: &[&str], log: &Path, stdio: StdioMode) -> Plug {
        let program = plug_binary();
        let mut cmd = match netns {
            Some(ns) => ns.exec_command(&program),
            None => Command::new(&program),
        };
        cmd.args(args);
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup plug log fd");
        match stdio {
            StdioMode::Detached => cmd.stdin(Stdio::null()).stdout(out),
            StdioMode::Piped => cmd.stdin(Stdio::piped()).stdout(Stdio::piped()),
            StdioMode::Fds(stdin, stdout) => cmd.stdin(stdin).stdout(stdout),
        };
        cmd.stderr(err);
        let mut argv = vec![program.into_os_string()];
        argv.extend(args.iter().map(OsString::from));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the plug {argv:?}: {e}"));
        // The Command (and with it our copies of any pipe ends) is dropped
        // here, so a plug sees EOF as soon as its peer exits.
        Plug {
            process: ChildProcess::new(child),
            argv,
            log: log.to_path_buf(),
        }
    }

    /// The plug's stdin, for [`Plug::spawn_piped`] (once).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.process
            .child_mut()
            .stdin
            .take()
            .expect("plug stdin is piped")
    }

    /// The plug's stdout, for [`Plug::spawn_piped`] (once).
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.process
            .child_mut()
            .stdout
            .take()
            .expect("plug stdout is piped")
    }

    /// Process ID of the plug (`ip netns exec` execs, so it is the plug's).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The log file (stderr, and stdout unless piped).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the plug has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }

    /// Waits up to `timeout` for the plug to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Sends `signal` to the plug's PID, unless it has already been reaped.
    pub fn signal(&mut self, signal: libc::c_int) {
        let _ = self.process.signal(signal);
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Panics unless the plug is still running.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_status() {
            self.fail(format!("the plug exited unexpectedly ({status})"));
        }
    }

    /// Panics with `msg`, the plug's command line and the tail of its log.
    pub fn fail(&self, msg: impl fmt::Display) -> ! {
        panic!("{msg}\n{}", self.diagnostics());
    }

    /// The plug's command line and the tail of its log, for messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- plug {:?}, log {} (last {TAIL_LINES} lines) ---\n{}\n---",
            self.argv,
            self.log.display(),
            log_tail(&self.log, TAIL_LINES)
        )
    }
}

impl Drop for Plug {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        if self.try_status().is_some() {
            return;
        }
        if self.terminate(TERM_GRACE).is_none() {
            self.process.kill_and_reap();
        }
    }
}

/// A pipe, both ends close-on-exec (a child gets only what it is given).
#[allow(unsafe_code)]
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two file descriptors into the 2-element array we
    // pass, which lives for the whole call.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing
    // else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits up to `timeout` until `log()` contains `needle` at least `count`
/// times; returns whether it did.
pub fn wait_for_log(
    log: impl Fn() -> String,
    needle: &str,
    count: usize,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if log().matches(needle).count() >= count {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL);
    }
}

/// Joins namespaces `a` and `b` by a veth pair (`a_if` in `a` with
/// `a_cidr`, `b_if` in `b` with `b_cidr`, both up).  The pair disappears
/// with the namespaces.
pub fn link_namespaces(a: &NetNs, a_if: &str, a_cidr: &str, b: &NetNs, b_if: &str, b_cidr: &str) {
    a.ip_ok(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip_ok(&["addr", "add", a_cidr, "dev", a_if]);
    b.ip_ok(&["addr", "add", b_cidr, "dev", b_if]);
    a.ip_ok(&["link", "set", a_if, "up"]);
    b.ip_ok(&["link", "set", b_if, "up"]);
}

/// A guest script (for [`crate::uml::GuestBuilder::script`]) that waits
/// (bounded, 120 s) for the file `barrier` in its run directory, then pings
/// `peer` like [`crate::uml::ping_all_script`] (report in
/// `ping-PEER.out`/`.rc`, see [`crate::uml::expect_scripted_ping`]).  Used
/// to ping again after the test has swapped the cable.
pub fn ping_after_barrier_script(barrier: &str, peer: &str) -> String {
    format!(
        r#"
ticks=0
while [ ! -e "$DIR/{barrier}" ] && [ "$ticks" -lt 600 ]; do
    sleep 0.2
    ticks=$((ticks + 1))
done
echo "E2E: barrier {barrier} passed"
{ping}"#,
        ping = crate::uml::ping_all_script(&[peer])
    )
}

/// Opens the barrier of [`ping_after_barrier_script`] for `guest`.
pub fn open_barrier(guest: &Guest, barrier: &str) {
    let path = guest.run_dir().join(barrier);
    fs::write(&path, b"").unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// Panics unless `tcpdump` is installed (Debian's `tcpdump`, which
/// `./run-tests.sh` installs); the pcap test never skips silently.
pub fn require_tcpdump() {
    assert!(
        find_program("tcpdump").is_some(),
        "the pcap test reads the capture with `tcpdump` (Debian package tcpdump); \
         run ./run-tests.sh, which installs it (this test never skips silently)"
    );
}

/// One packet record of a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    /// Seconds of the timestamp.
    pub ts_sec: u32,
    /// Microseconds (or nanoseconds, see [`Pcap::nanos`]) of the timestamp.
    pub ts_frac: u32,
    /// Length of the packet on the wire.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// A parsed pcap file (PROTOCOLS.md §5), either byte order.
#[derive(Debug, Clone)]
pub struct Pcap {
    /// Whether timestamps are in nanoseconds (magic 0xa1b23c4d).
    pub nanos: bool,
    /// The link type (1 = Ethernet).
    pub linktype: u32,
    /// The snapshot length.
    pub snaplen: u32,
    /// The packets, in file order.
    pub records: Vec<PcapRecord>,
}

/// Parses a whole pcap file; errors say what is wrong.
pub fn parse_pcap(bytes: &[u8]) -> Result<Pcap, String> {
    if bytes.len() < 24 {
        return Err(format!("{} bytes: shorter than a pcap header", bytes.len()));
    }
    let magic_le = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let (big_endian, nanos) = match magic_le {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        other => return Err(format!("bad pcap magic {other:#010x}")),
    };
    let u16_at = |off: usize| {
        let b: [u8; 2] = bytes[off..off + 2].try_into().expect("2 bytes");
        if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = bytes[off..off + 4].try_into().expect("4 bytes");
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let (major, minor) = (u16_at(4), u16_at(6));
    if (major, minor) != (2, 4) {
        return Err(format!("pcap version {major}.{minor}, expected 2.4"));
    }
    let snaplen = u32_at(16);
    let linktype = u32_at(20);
    let mut records = Vec::new();
    let mut off = 24;
    while off < bytes.len() {
        if bytes.len() - off < 16 {
            return Err(format!(
                "truncated record header at offset {off} ({} bytes left)",
                bytes.len() - off
            ));
        }
        let incl = u32_at(off + 8) as usize;
        let record = PcapRecord {
            ts_sec: u32_at(off),
            ts_frac: u32_at(off + 4),
            orig_len: u32_at(off + 12),
            data: Vec::new(),
        };
        off += 16;
        if bytes.len() - off < incl {
            return Err(format!(
                "record at offset {} claims {incl} bytes, {} left",
                off - 16,
                bytes.len() - off
            ));
        }
        records.push(PcapRecord {
            data: bytes[off..off + incl].to_vec(),
            ..record
        });
        off += incl;
    }
    Ok(Pcap {
        nanos,
        linktype,
        snaplen,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_quoting() {
        assert_eq!(uml_url(Path::new("/tmp/a/ctl")), "uml:///tmp/a/ctl");
        assert_eq!(vde_url(Path::new("/tmp/v")), "vde:///tmp/v");
        assert_eq!(
            vxlan_url("10.1.0.2", 42, "10.1.0.1"),
            "vxlan://10.1.0.2?vni=42&local=10.1.0.1"
        );
        assert_eq!(
            cmd_url(&["ip", "netns", "exec", "h2", "/x/uml-plug", "uml:///t/ctl"]),
            "cmd://ip netns exec h2 /x/uml-plug uml:///t/ctl"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn parses_pcap_in_both_byte_orders() {
        for big in [false, true] {
            let w32 = |v: u32| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let w16 = |v: u16| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let mut file = Vec::new();
            file.extend_from_slice(&w32(0xa1b2_c3d4));
            file.extend_from_slice(&w16(2));
            file.extend_from_slice(&w16(4));
            file.extend_from_slice(&[0; 8]);
            file.extend_from_slice(&w32(262_144));
            file.extend_from_slice(&w32(1));
            for len in [14u32, 60] {
                file.extend_from_slice(&w32(5));
                file.extend_from_slice(&w32(7));
                file.extend_from_slice(&w32(len));
                file.extend_from_slice(&w32(len));
                file.extend(std::iter::repeat_n(0xab, len as usize));
            }
            let pcap = parse_pcap(&file).unwrap();
            assert!(!pcap.nanos);
            assert_eq!((pcap.linktype, pcap.snaplen), (1, 262_144));
            assert_eq!(pcap.records.len(), 2);
            assert_eq!(pcap.records[1].data.len(), 60);
            assert_eq!(pcap.records[0].ts_sec, 5);
            assert!(parse_pcap(&file[..file.len() - 1]).is_err());
        }
        assert!(parse_pcap(b"not a pcap file at all!!").is_err());
    }
}
