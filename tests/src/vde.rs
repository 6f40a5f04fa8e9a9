//! vde2 clients and switches for the compatibility tests of the vde_switch
//! directory layout (`uml-switch --vde-dir DIR`, PROTOCOLS.md §2 and §4).
//!
//! [`VdePlug`] runs Debian's `vde_plug` (package `vdeplug`, pulled in by
//! `vde2`) as a child whose stdin and stdout carry the network in
//! `vde_plug`'s stream framing: each record is a 2-byte big-endian length
//! followed by one Ethernet frame.  `vde_plug` links libvdeplug, so it
//! attaches exactly as QEMU and UML's vde transport do.
//!
//! [`Vde2Switch`] runs vde2's own `vde_switch -s DIR`, the reference
//! implementation of the layout, for comparison runs of the tests.
//!
//! Every wait is bounded; dropping either stops the one process it started
//! (by PID).

use crate::process::ChildProcess;
use std::fs::{self, File};
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The `vde_plug` program these tests run.
pub const VDE_PLUG: &str = "vde_plug";

/// vde2's switch, for comparison runs.
pub const VDE_SWITCH: &str = "vde_switch";

/// Largest frame `vde_plug` (vdeplug4) accepts on stdin: its 9234-byte
/// buffer (MTU 9216 + 18).
pub const VDE_PLUG_MAX_FRAME: usize = 9234;

/// How long `Drop` waits for `vde_plug` to exit after its stdin is closed
/// before killing it.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Polling interval of the waits in this module.
const POLL: Duration = Duration::from_millis(10);

/// Looks `program` up in `$PATH` like a shell would.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Panics unless every program in `programs` (e.g. `vde_plug`) is in `$PATH`.
/// The vde compatibility tests never skip: without vde2 they fail and point
/// at `./run-tests.sh`, which installs it.
pub fn require_programs(programs: &[&str]) {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the vde compatibility tests need {} from Debian's vde2 package \
         (vdeplug, vde-switch); run ./run-tests.sh, which installs it \
         (these tests never skip silently)",
        missing
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(" and ")
    );
}

/// Panics unless `vde_plug` is installed; see [`require_programs`].
pub fn require_vde_plug() {
    require_programs(&[VDE_PLUG]);
}

/// Polls `f` every [`POLL`] until it returns `Some` or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// The per-port data sockets in a vde directory: every socket file in `dir`
/// except `ctl` and the hidden `.PPPPP-SSSSS` sockets libvdeplug clients
/// bind there briefly during their handshake.  Sorted by name.
pub fn data_sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name != "ctl"
                && !name.starts_with('.')
                && entry.file_type().is_ok_and(|t| t.is_socket())
        })
        .map(|entry| entry.path())
        .collect();
    sockets.sort();
    sockets
}

/// Encodes one `vde_plug` stream record: 2-byte big-endian length, frame.
pub fn encode_record(frame: &[u8]) -> Vec<u8> {
    let len = u16::try_from(frame.len()).expect("frame longer than 65535 bytes");
    let mut record = Vec::with_capacity(2 + frame.len());
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(frame);
    record
}

/// A running `vde_plug URL`, its stdin and stdout being the network.
pub struct VdePlug {
    url: String,
    process: ChildProcess,
    stdin: Option<ChildStdin>,
    frames: Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl VdePlug {
    /// Starts `vde_plug URL` (e.g. `DIR`, `DIR[5]`, `vde://DIR[port=5]`).
    /// Does not wait for it to attach: see [`wait_for_data_socket`] or the
    /// switch's log.
    pub fn spawn(url: &str) -> io::Result<VdePlug> {
        VdePlug::spawn_with_args(&[], url)
    }

    /// Starts `vde_plug OPTIONS... URL` (e.g. `["-D", "descr"]`).
    pub fn spawn_with_args(options: &[&str], url: &str) -> io::Result<VdePlug> {
        let mut cmd = Command::new(VDE_PLUG);
        cmd.args(options).arg(url);
        VdePlug::spawn_command(cmd, url)
    }

    /// Starts `vde_plug URL` as user `uid`, group `gid` (no supplementary
    /// groups), e.g. to be another user than the switch's port owner.
    /// Needs root.
    pub fn spawn_as(url: &str, uid: u32, gid: u32) -> io::Result<VdePlug> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(VDE_PLUG);
        cmd.arg(url).uid(uid).gid(gid);
        VdePlug::spawn_command(cmd, url)
    }

    fn spawn_command(mut cmd: Command, url: &str) -> io::Result<VdePlug> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");

        let (tx, frames) = mpsc::channel();
        thread::Builder::new()
            .name(format!("vde_plug-{}-stdout", child.id()))
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                loop {
                    let mut len = [0u8; 2];
                    if reader.read_exact(&mut len).is_err() {
                        return;
                    }
                    let len = usize::from(u16::from_be_bytes(len));
                    if len == 0 {
                        continue; // vde_plug's readers skip empty records too
                    }
                    let mut frame = vec![0u8; len];
                    if reader.read_exact(&mut frame).is_err() || tx.send(frame).is_err() {
                        return;
                    }
                }
            })?;

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        thread::Builder::new()
            .name(format!("vde_plug-{}-stderr", child.id()))
            .spawn(move || {
                let mut pipe = stderr_pipe;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            })?;

        Ok(VdePlug {
            url: url.to_owned(),
            process: ChildProcess::new(child),
            stdin,
            frames,
            stderr,
        })
    }

    /// The URL `vde_plug` was given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Process ID of `vde_plug`.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends one frame into the network: a single `write()` of the whole
    /// record (length prefix and frame), because `vde_plug` loses a length
    /// prefix split across reads and desynchronises.
    pub fn send_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        assert!(
            frame.len() <= VDE_PLUG_MAX_FRAME,
            "vde_plug accepts frames of at most {VDE_PLUG_MAX_FRAME} bytes"
        );
        let record = encode_record(frame);
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(ErrorKind::BrokenPipe, "stdin already closed"))?;
        // A pipe write of at most PIPE_BUF (4096) bytes is atomic; longer
        // records still go out in one write() call (blocking pipes do not
        // return short writes unless interrupted).
        let written = stdin.write(&record)?;
        if written != record.len() {
            return Err(io::Error::new(
                ErrorKind::WriteZero,
                format!(
                    "short write of a record: {written} of {} bytes",
                    record.len()
                ),
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the next frame `vde_plug` writes to stdout;
    /// `None` if none arrived (or `vde_plug` has exited).
    pub fn recv_frame(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.frames.recv_timeout(timeout).ok()
    }

    /// Discards every frame already received; returns how many there were.
    pub fn drain(&self) -> usize {
        self.frames.try_iter().count()
    }

    /// Closes `vde_plug`'s stdin, which makes it exit (detach).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The exit status if `vde_plug` has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }

    /// Waits up to `timeout` for `vde_plug` to exit; `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Everything `vde_plug` wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let bytes = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Kills `vde_plug` (SIGKILL to its PID) without closing its stdin
    /// first, and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.process.kill_and_reap()
    }

    /// Stops `vde_plug`: closes its stdin, waits [`EXIT_GRACE`], then kills
    /// it (SIGKILL to its PID).  Returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.close_stdin();
        if self.wait_exit(EXIT_GRACE).is_none() {
            return self.kill();
        }
        self.try_status()
    }
}

impl Drop for VdePlug {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits up to `timeout` until `dir` holds at least `count` data sockets
/// (see [`data_sockets`]) and returns them.
pub fn wait_for_data_sockets(dir: &Path, count: usize, timeout: Duration) -> Option<Vec<PathBuf>> {
    poll_until(timeout, || {
        let sockets = data_sockets(dir);
        (sockets.len() >= count).then_some(sockets)
    })
}

/// vde2's `vde_switch -s DIR -n PORTS` in the current namespace, the
/// reference implementation of the layout.  Its stdin is a pipe kept open
/// (it exits on EOF there); its output goes to a log file.  It names data
/// sockets `DIR/NNN.F` (port, switch fd).
pub struct Vde2Switch {
    process: ChildProcess,
    _stdin: Option<ChildStdin>,
    dir: PathBuf,
    log: PathBuf,
}

impl Vde2Switch {
    /// Starts `vde_switch -s DIR -n PORTS EXTRA...` logging to `log`, and
    /// waits (up to `timeout`) until `DIR/ctl` accepts connections.
    pub fn start(
        dir: &Path,
        ports: u32,
        extra: &[&str],
        log: &Path,
        timeout: Duration,
    ) -> Vde2Switch {
        require_programs(&[VDE_SWITCH]);
        let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        let mut child = Command::new(VDE_SWITCH)
            .arg("-s")
            .arg(dir)
            .arg("-n")
            .arg(ports.to_string())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {VDE_SWITCH}: {e}"));
        let stdin = child.stdin.take();
        let mut switch = Vde2Switch {
            process: ChildProcess::new(child),
            _stdin: stdin,
            dir: dir.to_owned(),
            log: log.to_owned(),
        };
        let ctl = dir.join("ctl");
        let ready = poll_until(timeout, || {
            if switch.try_status().is_some() {
                return Some(false);
            }
            UnixStream::connect(&ctl).ok().map(|_| true)
        });
        assert!(
            ready == Some(true),
            "vde_switch did not listen on {} within {timeout:?}\n{}",
            ctl.display(),
            switch.logs()
        );
        switch
    }

    /// The directory `DIR`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process ID of the switch.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The switch's log so far, labelled, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- vde_switch log {} ---\n{}---",
            self.log.display(),
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// The exit status if the switch has exited (reaping it), else `None`.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.process.try_status()
    }

    /// Sends `signal` to the switch, unless it has already been reaped.
    pub fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        self.process.signal(signal)
    }

    /// Waits up to `timeout` for the switch to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }
}

impl Drop for Vde2Switch {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let _ = self.signal(libc::SIGTERM);
        if self.wait_exit(EXIT_GRACE).is_none() {
            self.process.kill_and_reap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_is_big_endian_length_then_frame() {
        let frame: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let record = encode_record(&frame);
        assert_eq!(&record[..2], &[0x01, 0x2c]);
        assert_eq!(&record[2..], &frame[..]);
    }
}
