//! `uml_iperf`: iperf3 throughput between two real User-Mode-Linux guests,
//! through uml-switch and, for comparison, through vde2's `vde_switch`.
//!
//! Every run gets a fresh network namespace, a fresh switch and two fresh
//! guests (Debian's `user-mode-linux` booting the host's `/` through hostfs,
//! see `uml_switch_tests::uml`) with fixed MACs and addresses in
//! `10.231.7.0/24`, a subnet that exists only inside that namespace.  Guest
//! B runs `iperf3 -s`; guest A runs `iperf3 -c B -t SECS -J` (and, with
//! `--udp`, `iperf3 -c B -u -b 0 -l 1400 -w 2M -t SECS -J`), and the host
//! reads the JSON through the shared run directory.  The two switches
//! alternate (ABBA order) for `--reps` repetitions; the program prints one
//! line per run and a markdown table of the medians.
//!
//! Needs root, `linux`, `ip`, `ping`, `busybox`, `vde_switch` (Debian's
//! `vde-switch`) and `iperf3` (installed with apt-get if missing).  Every
//! wait is bounded; only processes this program started are stopped; the
//! namespaces and scratch directories are removed at the end of each run.
//!
//! ```text
//! cargo build --release -p uml-switch -p uml-switch-benches
//! target/release/uml_iperf [--reps 3] [--time 10] [--udp]
//! ```

use std::fs::{self, File};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use uml_switch_tests::netns::NetNs;
use uml_switch_tests::uml::{
    log_tail, require_uml_environment, Guest, GuestBuilder, SwitchImpl, SwitchProcess,
};

/// Guest A (iperf3 client).
const MAC_A: &str = "02:00:0a:e7:07:01";
const ADDR_A: &str = "10.231.7.1/24";
/// Guest B (iperf3 server).
const MAC_B: &str = "02:00:0a:e7:07:02";
const ADDR_B: &str = "10.231.7.2/24";
const IP_B: &str = "10.231.7.2";

/// How long `vde_switch` may take to create its control socket.
const VDE_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `vde_switch` may take to exit once its stdin is closed.
const VDE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `apt-get install iperf3` may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Attempts of each iperf3 client run (a refused connection is retried).
const CLIENT_ATTEMPTS: u32 = 10;

/// Command-line options.
#[derive(Debug, Clone)]
struct Opts {
    reps: usize,
    secs: u32,
    udp: bool,
    mem: String,
    uml_switch: PathBuf,
    vde_switch: PathBuf,
}

const USAGE: &str = "\
usage: uml_iperf [--reps N] [--time SECS] [--udp] [--mem SIZE]
                 [--uml-switch PATH] [--vde-switch PATH]

iperf3 throughput between two User-Mode-Linux guests, through uml-switch and
through vde2's vde_switch, each in a fresh network namespace, alternating.

  --reps N           repetitions per switch (default 3)
  --time SECS        length of each iperf3 test (default 10)
  --udp              also measure UDP (-u -b 0 -l 1400 -w 2M) after TCP
  --mem SIZE         guest RAM, UML syntax (default 256M)
  --uml-switch PATH  uml-switch binary (default: next to this program,
                     else target/release/uml-switch)
  --vde-switch PATH  vde_switch binary (default: vde_switch in PATH)
";

fn parse_args() -> Result<Opts, String> {
    let mut opts = Opts {
        reps: 3,
        secs: 10,
        udp: false,
        mem: "256M".into(),
        uml_switch: default_uml_switch(),
        vde_switch: "vde_switch".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--reps" => {
                opts.reps = value("--reps")?
                    .parse()
                    .map_err(|e| format!("--reps: {e}"))?;
            }
            "--time" => {
                opts.secs = value("--time")?
                    .parse()
                    .map_err(|e| format!("--time: {e}"))?;
            }
            "--udp" => opts.udp = true,
            "--mem" => opts.mem = value("--mem")?,
            "--uml-switch" => opts.uml_switch = value("--uml-switch")?.into(),
            "--vde-switch" => opts.vde_switch = value("--vde-switch")?.into(),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if opts.reps == 0 || opts.secs == 0 {
        return Err("--reps and --time must be positive".into());
    }
    Ok(opts)
}

/// `uml-switch` next to this executable (cargo puts both in
/// `target/release`), else `target/release/uml-switch`.
fn default_uml_switch() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("uml-switch")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("target/release/uml-switch"))
}

/// Which switch a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    UmlSwitch,
    VdeSwitch,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::UmlSwitch => "uml-switch",
            Target::VdeSwitch => "vde_switch",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    tcp_bps: f64,
    tcp_retransmits: Option<f64>,
    udp_bps: Option<f64>,
    udp_lost_percent: Option<f64>,
    /// CPU time (user + system) the switch process used during the iperf3
    /// tests (and the guests' retries, if any).
    switch_cpu_secs: Option<f64>,
    boot_secs: f64,
    /// `eth0` counters of guest A (client) and B (server) after the tests.
    link_a: LinkDrops,
    link_b: LinkDrops,
}

/// Drop counters of a guest's `eth0`.  UML counts a frame in `tx.dropped`
/// when its send to the switch fails with EAGAIN (the switch's socket
/// queue is full).
#[derive(Debug, Clone, Copy, Default)]
struct LinkDrops {
    tx_dropped: Option<f64>,
    rx_dropped: Option<f64>,
    /// UDP datagrams the guest's own socket buffers dropped
    /// (`/proc/net/snmp` Udp RcvbufErrors): loss that is not the switch's.
    udp_rcvbuf_errors: Option<f64>,
}

impl LinkDrops {
    /// Parses `ip -s -j link show dev eth0` output (missing file: unknown).
    fn read(guest: &Guest) -> LinkDrops {
        let path = guest.run_dir().join("link.json");
        let json: Option<Value> = fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let get = |p: &str| json.as_ref().and_then(|j| number(j, p));
        let snmp = fs::read_to_string(guest.run_dir().join("snmp.txt")).unwrap_or_default();
        LinkDrops {
            tx_dropped: get("/0/stats64/tx/dropped"),
            rx_dropped: get("/0/stats64/rx/dropped"),
            udp_rcvbuf_errors: snmp_counter(&snmp, "Udp", "RcvbufErrors"),
        }
    }
}

/// A counter from `/proc/net/snmp` text: a header line `PROTO: Name...`
/// followed by a value line `PROTO: value...`.
fn snmp_counter(snmp: &str, proto: &str, name: &str) -> Option<f64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// A directory under `$TMPDIR` for one run (sockets, logs, guest run
/// directories); removed on drop.  Short: socket paths must fit in 108 bytes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(run: usize) -> Result<Scratch, String> {
        let path = std::env::temp_dir().join(format!("uml-iperf-{}-{run}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
        fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// vde2's `vde_switch -s DIR` inside a namespace.  It reads commands from
/// stdin and exits at EOF, so we hold a pipe to its stdin and close it to
/// stop the switch (SIGKILL if that does not work).
struct VdeSwitch {
    child: Child,
    stdin: Option<ChildStdin>,
    ctl: PathBuf,
    log: PathBuf,
}

impl VdeSwitch {
    fn start(program: &Path, ns: &NetNs, dir: &Path, log: &Path) -> Result<VdeSwitch, String> {
        let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| format!("dup log fd: {e}"))?;
        let mut child = ns
            .exec_command(program)
            .arg("-s")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let stdin = child.stdin.take();
        let mut vde = VdeSwitch {
            child,
            stdin,
            ctl: dir.join("ctl"),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + VDE_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = vde.child.try_wait() {
                return Err(format!(
                    "vde_switch exited ({status}) before {} accepted connections:\n{}",
                    vde.ctl.display(),
                    log_tail(&vde.log, 20)
                ));
            }
            if UnixStream::connect(&vde.ctl).is_ok() {
                return Ok(vde);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "vde_switch's {} did not accept connections within {VDE_START_TIMEOUT:?}:\n{}",
                    vde.ctl.display(),
                    log_tail(&vde.log, 20)
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + VDE_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        eprintln!(
            "vde_switch (pid {}) ignored EOF; killing it",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The switch of one run.
enum Switch {
    Ours(SwitchProcess),
    Vde(VdeSwitch),
}

impl Switch {
    fn start(target: Target, opts: &Opts, ns: &NetNs, dir: &Path) -> Result<Switch, String> {
        let log = dir.join("switch.log");
        match target {
            Target::UmlSwitch => Ok(Switch::Ours(SwitchProcess::start(
                &SwitchImpl::UnderTest(opts.uml_switch.clone()),
                Some(ns),
                &dir.join("ctl"),
                &[],
                &log,
            ))),
            Target::VdeSwitch => {
                VdeSwitch::start(&opts.vde_switch, ns, &dir.join("vde"), &log).map(Switch::Vde)
            }
        }
    }

    fn guest<'a>(&self, name: &str) -> GuestBuilder<'a> {
        match self {
            Switch::Ours(s) => Guest::builder(name, s),
            Switch::Vde(v) => Guest::builder_for_socket(name, &v.ctl),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Switch::Ours(s) => s.pid(),
            Switch::Vde(v) => v.child.id(),
        }
    }

    fn log(&self) -> &Path {
        match self {
            Switch::Ours(s) => s.log(),
            Switch::Vde(v) => &v.log,
        }
    }

    /// Panics (like the harness does) if the switch has exited.
    fn assert_running(&mut self) {
        match self {
            Switch::Ours(s) => s.assert_running(),
            Switch::Vde(v) => {
                if !v.running() {
                    panic!("vde_switch exited unexpectedly:\n{}", log_tail(&v.log, 20));
                }
            }
        }
    }
}

/// Shell commands shared by both guests: a tmpfs for iperf3's `$TMPDIR`
/// (mounted over a directory of the run directory, so nothing lands on the
/// host) and socket buffer limits large enough for `-w 2M`.
const GUEST_SETUP: &str = r#"
mkdir -p "$DIR/tmp"
mount -t tmpfs -o size=16m tmpfs "$DIR/tmp"
TMPDIR="$DIR/tmp"
export TMPDIR
echo 8388608 >/proc/sys/net/core/rmem_max
echo 8388608 >/proc/sys/net/core/wmem_max
"#;

/// Writes `eth0`'s counters (`ip -s -j link`) to `$DIR/link.json` and the
/// guest's protocol counters to `$DIR/snmp.txt` (`link.json` last).
const LINK_STATS: &str = r#"cat /proc/net/snmp >"$DIR/snmp.txt" 2>&1
    ip -s -j link show dev eth0 >"$DIR/link.tmp" 2>&1
    mv "$DIR/link.tmp" "$DIR/link.json""#;

/// Guest B: an iperf3 server in the background (killed by the halt), and a
/// background job that reports `eth0`'s counters once the host creates
/// `stats.req`.  `limit` (seconds) bounds both in case the host goes away.
fn server_script(limit: u64) -> String {
    let ticks = limit * 5;
    format!(
        r#"{GUEST_SETUP}
timeout {limit} iperf3 -s >"$DIR/server.log" 2>&1 &
(
    t=0
    while [ ! -e "$DIR/stats.req" ] && [ "$t" -lt {ticks} ]; do
        sleep 0.2
        t=$((t + 1))
    done
    {LINK_STATS}
) &
echo "IPERF: server started"
"#
    )
}

/// Guest A: waits (bounded) until B answers pings, then runs the tests,
/// each retried a few times if iperf3 fails (e.g. the server is not yet
/// listening), writing `NAME.json` (the last attempt's) and finally
/// `iperf.done`.
fn client_script(secs: u32, udp: bool) -> String {
    let limit = u64::from(secs) + 30;
    let udp = if udp {
        format!("iperf_run udp -u -b 0 -l 1400 -w 2M -t {secs}")
    } else {
        String::new()
    };
    format!(
        r#"{GUEST_SETUP}
tries=0
until ping -c 1 -W 1 {IP_B} >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -ge 60 ] && break
    sleep 0.2
done
echo "IPERF: peer answered after $tries failed probes"
iperf_run() {{
    name=$1
    shift
    n=0
    while :; do
        timeout {limit} iperf3 -c {IP_B} --connect-timeout 3000 "$@" -J \
            >"$DIR/$name.tmp" 2>"$DIR/$name.err"
        rc=$?
        # iperf3 -J may exit 0 after "Connection refused" (server not yet
        # listening): the JSON's "error" member tells.
        [ "$rc" -eq 0 ] && ! grep -q '"error"' "$DIR/$name.tmp" && break
        n=$((n + 1))
        [ "$n" -ge {CLIENT_ATTEMPTS} ] && break
        sleep 0.5
    done
    echo "IPERF: $name exited $rc after $n retries"
    mv "$DIR/$name.tmp" "$DIR/$name.json"
}}
iperf_run tcp -t {secs}
{udp}
{LINK_STATS}
echo done >"$DIR/iperf.done.tmp"
mv "$DIR/iperf.done.tmp" "$DIR/iperf.done"
"#
    )
}

/// Reads `NAME.json` from the guest's run directory.
fn read_json(guest: &Guest, name: &str) -> Result<Value, String> {
    let path = guest.run_dir().join(format!("{name}.json"));
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not JSON ({e}): {}",
            path.display(),
            text.chars().take(400).collect::<String>()
        )
    })?;
    if let Some(err) = json.get("error") {
        return Err(format!("iperf3 {name}: {err}"));
    }
    Ok(json)
}

fn number(json: &Value, pointer: &str) -> Option<f64> {
    json.pointer(pointer).and_then(Value::as_f64)
}

/// User + system CPU seconds of process `pid`, from `/proc/PID/stat`.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `fields[0]` is field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_sec)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One measurement: fresh namespace, switch and guests.  Panics (from the
/// harness) and errors both mean a failed run; everything is cleaned up by
/// the destructors either way.
fn run_once(opts: &Opts, target: Target, run: usize, ticks: f64) -> Result<Sample, String> {
    let ns = NetNs::new("umliperf");
    let scratch = Scratch::new(run)?;
    let mut switch = Switch::start(target, opts, &ns, &scratch.0)?;

    let tests = if opts.udp { 2 } else { 1 };
    let per_test = u64::from(opts.secs) + 30;
    let mut b = switch
        .guest("b")
        .netns(&ns)
        .mac(MAC_B)
        .addr(ADDR_B)
        .mem(&opts.mem)
        .script(&server_script(per_test * tests + 120))
        .boot(&scratch.0);
    let mut a = switch
        .guest("a")
        .netns(&ns)
        .mac(MAC_A)
        .addr(ADDR_A)
        .mem(&opts.mem)
        .script(&client_script(opts.secs, opts.udp))
        .boot(&scratch.0);
    let boot_b = b.wait_ready();
    let boot_a = a.wait_ready();
    let cpu_before = cpu_secs(switch.pid(), ticks);

    // Ping warm-up (<= 12 s), then each test (bounded by `per_test` in the
    // guest) with its quick retries.
    let budget = Duration::from_secs(60 + tests * (per_test + u64::from(CLIENT_ATTEMPTS) * 5));
    a.wait_file("iperf.done", budget);
    let cpu_after = cpu_secs(switch.pid(), ticks);
    switch.assert_running();
    if let Err(e) = fs::write(b.run_dir().join("stats.req"), b"") {
        eprintln!("warning: cannot ask guest b for its counters: {e}");
    } else {
        b.wait_file("link.json", Duration::from_secs(15));
    }

    let result = (|| {
        let tcp = read_json(&a, "tcp")?;
        let tcp_bps = number(&tcp, "/end/sum_received/bits_per_second")
            .ok_or("tcp.json has no end.sum_received.bits_per_second")?;
        let mut sample = Sample {
            tcp_bps,
            tcp_retransmits: number(&tcp, "/end/sum_sent/retransmits"),
            boot_secs: boot_a.max(boot_b).as_secs_f64(),
            switch_cpu_secs: cpu_before.zip(cpu_after).map(|(x, y)| y - x),
            link_a: LinkDrops::read(&a),
            link_b: LinkDrops::read(&b),
            ..Sample::default()
        };
        if opts.udp {
            let udp = read_json(&a, "udp")?;
            sample.udp_bps = number(&udp, "/end/sum_received/bits_per_second");
            sample.udp_lost_percent = number(&udp, "/end/sum/lost_percent");
        }
        Ok(sample)
    })();
    if let Err(e) = &result {
        eprintln!(
            "{e}\n--- guest a console ---\n{}\n--- switch log ---\n{}",
            log_tail(a.console(), 30),
            log_tail(switch.log(), 20)
        );
    }
    a.halt();
    b.halt();
    result
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn mbit(bps: f64) -> String {
    format!("{:.0}", bps / 1e6)
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

/// Installs iperf3 with apt-get if it is not in `PATH`.  Debian's package
/// asks (debconf) whether to start a system daemon; noninteractive answers
/// with the default, no.
fn ensure_iperf3() -> Result<(), String> {
    if which("iperf3") {
        return Ok(());
    }
    eprintln!("iperf3 not found; installing it with apt-get");
    let mut child = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "iperf3"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "apt-get install iperf3 took over {INSTALL_TIMEOUT:?}"
            ));
        }
        sleep(Duration::from_millis(200));
    };
    if !status.success() || !which("iperf3") {
        return Err(format!(
            "apt-get install iperf3 failed ({status}); try `apt-get update` first"
        ));
    }
    Ok(())
}

fn which(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("uml_iperf: {e}");
            return ExitCode::from(2);
        }
    };
    require_uml_environment();
    if let Err(e) = ensure_iperf3() {
        eprintln!("uml_iperf: {e}");
        return ExitCode::FAILURE;
    }
    if !opts.uml_switch.is_file() {
        eprintln!(
            "uml_iperf: no uml-switch binary at {} (cargo build --release -p uml-switch, \
             or --uml-switch PATH)",
            opts.uml_switch.display()
        );
        return ExitCode::FAILURE;
    }
    let vde_ok = if opts.vde_switch.components().count() > 1 {
        opts.vde_switch.is_file()
    } else {
        which(&opts.vde_switch.to_string_lossy())
    };
    if !vde_ok {
        eprintln!(
            "uml_iperf: {} not found (apt-get install vde-switch, or --vde-switch PATH)",
            opts.vde_switch.display()
        );
        return ExitCode::FAILURE;
    }

    let ticks = clock_ticks();
    let targets = [Target::UmlSwitch, Target::VdeSwitch];
    let mut samples: Vec<(Target, Vec<Sample>, usize)> =
        targets.iter().map(|&t| (t, Vec::new(), 0)).collect();
    let started = Instant::now();
    eprintln!(
        "uml_iperf: {} reps x {} switches, {} s per test{}, guests mem={}, uml-switch {}",
        opts.reps,
        targets.len(),
        opts.secs,
        if opts.udp { ", TCP + UDP" } else { ", TCP" },
        opts.mem,
        opts.uml_switch.display()
    );
    let mut run = 0;
    for rep in 0..opts.reps {
        // ABBA order: each switch goes first in every other repetition.
        let mut order = targets;
        if rep % 2 == 1 {
            order.reverse();
        }
        for target in order {
            let outcome =
                panic::catch_unwind(AssertUnwindSafe(|| run_once(&opts, target, run, ticks)));
            run += 1;
            let slot = samples
                .iter_mut()
                .find(|(t, _, _)| *t == target)
                .expect("known target");
            match outcome {
                Ok(Ok(s)) => {
                    let mut line = format!(
                        "rep {} {:<10} TCP {:>6} Mbit/s (retr {})",
                        rep + 1,
                        target.name(),
                        mbit(s.tcp_bps),
                        fmt_opt(s.tcp_retransmits, 0)
                    );
                    if opts.udp {
                        line += &format!(
                            "  UDP {:>6} Mbit/s, {}% lost ({} in b's socket)",
                            fmt_opt(s.udp_bps.map(|b| b / 1e6), 0),
                            fmt_opt(s.udp_lost_percent, 1),
                            fmt_opt(s.link_b.udp_rcvbuf_errors, 0)
                        );
                    }
                    line += &format!(
                        "  switch CPU {} s  boot {:.1} s  eth0 drops: a tx {} rx {}, b tx {} rx {}",
                        fmt_opt(s.switch_cpu_secs, 2),
                        s.boot_secs,
                        fmt_opt(s.link_a.tx_dropped, 0),
                        fmt_opt(s.link_a.rx_dropped, 0),
                        fmt_opt(s.link_b.tx_dropped, 0),
                        fmt_opt(s.link_b.rx_dropped, 0),
                    );
                    println!("{line}");
                    slot.1.push(s);
                }
                Ok(Err(e)) => {
                    eprintln!("rep {} {}: FAILED: {e}", rep + 1, target.name());
                    slot.2 += 1;
                }
                Err(_) => {
                    eprintln!("rep {} {}: FAILED (panic above)", rep + 1, target.name());
                    slot.2 += 1;
                }
            }
        }
    }

    println!();
    let mut header = String::from(
        "| switch | runs ok | TCP Mbit/s (median) | TCP runs (Mbit/s) | TCP retransmits (median) |",
    );
    let mut rule = String::from("|---|---|---|---|---|");
    if opts.udp {
        header += " UDP recv Mbit/s (median) | UDP lost % (median) |";
        rule += "---|---|";
    }
    header += " switch CPU s per run (median) | guest TX drops a/b (median) |";
    rule += "---|---|";
    println!("{header}\n{rule}");
    let mut tcp_medians = Vec::new();
    let mut udp_medians = Vec::new();
    for (target, runs, failed) in &samples {
        let tcp: Vec<f64> = runs.iter().map(|s| s.tcp_bps).collect();
        let tcp_median = median(&tcp);
        tcp_medians.push(tcp_median);
        let all: Vec<String> = tcp.iter().map(|&b| mbit(b)).collect();
        let retr: Vec<f64> = runs.iter().filter_map(|s| s.tcp_retransmits).collect();
        let mut row = format!(
            "| {} | {}/{} | {} | {} | {} |",
            target.name(),
            runs.len(),
            runs.len() + failed,
            fmt_opt(tcp_median.map(|b| b / 1e6), 0),
            all.join(", "),
            fmt_opt(median(&retr), 0)
        );
        if opts.udp {
            let udp: Vec<f64> = runs.iter().filter_map(|s| s.udp_bps).collect();
            let lost: Vec<f64> = runs.iter().filter_map(|s| s.udp_lost_percent).collect();
            let udp_median = median(&udp);
            udp_medians.push(udp_median);
            row += &format!(
                " {} | {} |",
                fmt_opt(udp_median.map(|b| b / 1e6), 0),
                fmt_opt(median(&lost), 1)
            );
        }
        let cpu: Vec<f64> = runs.iter().filter_map(|s| s.switch_cpu_secs).collect();
        let tx_a: Vec<f64> = runs.iter().filter_map(|s| s.link_a.tx_dropped).collect();
        let tx_b: Vec<f64> = runs.iter().filter_map(|s| s.link_b.tx_dropped).collect();
        row += &format!(
            " {} | {} / {} |",
            fmt_opt(median(&cpu), 2),
            fmt_opt(median(&tx_a), 0),
            fmt_opt(median(&tx_b), 0)
        );
        println!("{row}");
    }
    println!();
    let ratio = |m: &[Option<f64>]| match m {
        [Some(ours), Some(vde)] if *vde > 0.0 => format!("{:.2}", ours / vde),
        _ => "n/a".to_string(),
    };
    println!(
        "TCP throughput ratio uml-switch / vde_switch (medians): {}",
        ratio(&tcp_medians)
    );
    if opts.udp {
        println!(
            "UDP received-throughput ratio uml-switch / vde_switch (medians): {}",
            ratio(&udp_medians)
        );
    }
    eprintln!(
        "uml_iperf: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if samples.iter().any(|(_, _, failed)| *failed > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
