//! The things measured: a fresh uml-switch or vde_switch process per
//! measurement (in its own temporary directory, killed by PID afterwards),
//! or no switch at all ("direct": clients send straight to each other).

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::sys;

/// How long a switch may take to accept on its control socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a switch may take to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// What a measurement runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Senders send straight to their receivers' sockets: the machine's floor.
    Direct,
    /// uml-switch (this project).
    UmlSwitch,
    /// vde2's vde_switch.
    Vde,
}

impl Kind {
    /// Every kind, in the order runs alternate them.
    pub const ALL: [Kind; 3] = [Kind::Direct, Kind::UmlSwitch, Kind::Vde];

    /// Short name used in tables, CSV and the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::UmlSwitch => "uml-switch",
            Kind::Vde => "vde_switch",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "direct" => Some(Kind::Direct),
            "uml-switch" | "uml_switch" | "uml" => Some(Kind::UmlSwitch),
            "vde" | "vde_switch" | "vde-switch" => Some(Kind::Vde),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the switch binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// uml-switch.
    pub uml_switch: PathBuf,
    /// vde_switch.
    pub vde_switch: PathBuf,
    /// Extra arguments for uml-switch (e.g. `--threads 2`).
    pub uml_switch_args: Vec<String>,
}

/// PIDs of live children and temp dirs, for the signal handler's cleanup.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// Kills every child still registered and removes the temp dirs: called by
/// the signal thread before exiting.
pub fn emergency_cleanup() {
    let pids: Vec<u32> = CHILDREN.lock().map(|v| v.clone()).unwrap_or_default();
    for &pid in &pids {
        let _ = sys::kill(pid, libc::SIGTERM);
    }
    if !pids.is_empty() {
        thread::sleep(Duration::from_millis(300));
        for &pid in &pids {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }
    let dirs: Vec<PathBuf> = TEMP_DIRS.lock().map(|v| v.clone()).unwrap_or_default();
    for dir in dirs {
        let _ = fs::remove_dir_all(dir);
    }
}

fn register<T: PartialEq>(list: &Mutex<Vec<T>>, item: T) {
    if let Ok(mut v) = list.lock() {
        v.push(item);
    }
}

fn unregister<T: PartialEq>(list: &Mutex<Vec<T>>, item: &T) {
    if let Ok(mut v) = list.lock() {
        v.retain(|x| x != item);
    }
}

/// A private temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/loadgen.<pid>.<n>` (mode 0700).
    pub fn new() -> io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("loadgen.{}.{n}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        register(&TEMP_DIRS, path.clone());
        Ok(TempDir(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        unregister(&TEMP_DIRS, &self.0);
    }
}

/// A running target: a switch process (or nothing, for direct).
pub struct Target {
    /// Which one.
    pub kind: Kind,
    child: Option<Child>,
    /// vde_switch leaves when its stdin (a console) hits EOF: hold it open.
    _stdin: Option<ChildStdin>,
    ctl: Option<PathBuf>,
    log: Option<PathBuf>,
    dir: Option<TempDir>,
}

impl Target {
    /// Starts a fresh target and waits until it accepts connections.
    pub fn start(kind: Kind, bins: &Binaries, ports: usize) -> io::Result<Target> {
        if kind == Kind::Direct {
            return Ok(Target {
                kind,
                child: None,
                _stdin: None,
                ctl: None,
                log: None,
                dir: None,
            });
        }
        let dir = TempDir::new()?;
        let log = dir.path().join("switch.log");
        let (mut command, ctl) = match kind {
            Kind::UmlSwitch => {
                let ctl = dir.path().join("ctl");
                let mut c = Command::new(&bins.uml_switch);
                c.arg("--sock").arg(&ctl).args(&bins.uml_switch_args);
                (c, ctl)
            }
            Kind::Vde => {
                let sw = dir.path().join("vde");
                let mut c = Command::new(&bins.vde_switch);
                c.arg("-s").arg(&sw);
                if ports + 1 > 31 {
                    c.arg("-n").arg((ports + 2).max(64).to_string());
                }
                (c, sw.join("ctl"))
            }
            Kind::Direct => unreachable!(),
        };
        let log_file = File::create(&log)?;
        command
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        sys::configure_child(&mut command);
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot start {}: {e}",
                    command.get_program().to_string_lossy()
                ),
            )
        })?;
        register(&CHILDREN, child.id());
        let stdin = child.stdin.take();
        let mut target = Target {
            kind,
            child: Some(child),
            _stdin: stdin,
            ctl: Some(ctl),
            log: Some(log),
            dir: Some(dir),
        };
        target.wait_ready()?;
        Ok(target)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let ctl = self.ctl.clone().expect("switch target has a control path");
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "{} exited during startup ({status}); log:\n{}",
                        self.kind,
                        self.log_tail()
                    )));
                }
            }
            if ctl.exists() && UnixStream::connect(&ctl).is_ok() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not accept on {} within {READY_TIMEOUT:?}; log:\n{}",
                        self.kind,
                        ctl.display(),
                        self.log_tail()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The control socket path (None for direct).
    pub fn ctl(&self) -> Option<&Path> {
        self.ctl.as_deref()
    }

    /// The switch's PID (None for direct).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the switch's log.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the switch has exited (always false for direct).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The switch's CPU time so far (user + system, all threads), in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.pid()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / sys::clock_ticks_per_second() as f64)
    }

    /// Stops the target, first copying the switch's log to `dest` if given.
    pub fn stop_saving_log(&mut self, dest: Option<&Path>) {
        self.stop_child();
        if let (Some(log), Some(dest)) = (&self.log, dest) {
            let _ = fs::copy(log, dest);
        }
        self.stop();
    }

    /// SIGTERM, bounded wait, SIGKILL; removes the temp dir.
    pub fn stop(&mut self) {
        self.stop_child();
        self._stdin = None;
        self.dir = None;
    }

    fn stop_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            if matches!(child.try_wait(), Ok(None)) {
                let _ = sys::kill(pid, libc::SIGTERM);
                let deadline = Instant::now() + TERM_GRACE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(5));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
            unregister(&CHILDREN, &pid);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}
