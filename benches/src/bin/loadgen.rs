//! `loadgen`: a load generator speaking User-Mode-Linux's daemon protocol,
//! measuring uml-switch, vde_switch and direct socket pairs (the machine's
//! floor) side by side. See `benches/run.sh` and the README.
//!
//! Every port is what a UML kernel makes: a control stream to the switch and
//! an unconnected datagram socket with an abstract address (addrlen 110);
//! frames go out with sendto/sendmmsg to the switch's data address. Each
//! measurement starts a fresh switch in a temporary directory and kills it
//! by PID afterwards.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use uml_switch_benches::loadgen::report::{self, Sweep};
use uml_switch_benches::loadgen::target::{self, Binaries, Kind};
use uml_switch_benches::loadgen::{run, sys, Config, RunOptions};

/// The benches crate, as seen when this binary was built.
const BENCHES_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The workspace root (parent of the benches crate).
fn workspace() -> PathBuf {
    let benches = PathBuf::from(BENCHES_DIR);
    benches.parent().map_or(benches.clone(), PathBuf::from)
}

const GROUPS: [&str; 4] = ["headline", "pingpong", "sizes", "ports"];

/// Load generator: uml-switch vs vde_switch vs direct socket pairs.
///
/// Groups of configurations (`--only`): headline = 64-byte frames at 2 and
/// 16 ports; pingpong = round-trip latency; sizes = frame-size sweep at 2
/// ports; ports = port-count sweep at 64 bytes. Default: all ("full" run).
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Cli {
    /// Short smoke run: 1 repetition, 1-second windows, 2000 pings.
    #[arg(long)]
    quick: bool,
    /// Repetitions per configuration and target (medians are reported).
    #[arg(short = 'r', long, value_name = "R")]
    reps: Option<usize>,
    /// Throughput measurement window in seconds.
    #[arg(short = 'd', long, value_name = "SECS")]
    duration: Option<f64>,
    /// Comma-separated groups to run: headline, pingpong, sizes, ports.
    #[arg(long, value_delimiter = ',', value_name = "GROUPS")]
    only: Vec<String>,
    /// Comma-separated targets: direct, uml-switch, vde.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "TARGETS",
        default_value = "direct,uml-switch,vde"
    )]
    targets: Vec<String>,
    /// Frame sizes of the size sweep.
    #[arg(long, value_delimiter = ',', default_value = "64,256,512,1024,1514")]
    sizes: Vec<usize>,
    /// Port counts of the port sweep (even numbers).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16")]
    ports: Vec<usize>,
    /// Frames per sendmmsg call by each sender (1 = one sendto per frame).
    #[arg(long, default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    batch: u16,
    /// Pace the senders to this total offered load (frames/s, split over the
    /// senders) instead of sending as fast as the sockets take frames; e.g.
    /// to find the highest loss-free rate.
    #[arg(long, value_name = "FPS")]
    rate: Option<f64>,
    /// Measured ping-pong round trips per sample.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
    /// The uml-switch binary [default: $CARGO_TARGET_DIR/release/uml-switch,
    /// else target/release/uml-switch in the workspace].
    #[arg(long, value_name = "PATH")]
    uml_switch: Option<PathBuf>,
    /// Extra argument for uml-switch (repeatable), e.g. --uml-switch-arg=--threads=2.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    uml_switch_arg: Vec<String>,
    /// Also copy every switch's log into OUT/logs/ (uml-switch logs port
    /// counters, e.g. queue_full drops, when a port leaves).
    #[arg(long)]
    keep_logs: bool,
    /// The vde_switch binary.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/vde_switch")]
    vde_switch: PathBuf,
    /// Output directory for samples.csv, report.md and the SVG charts.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    // Ctrl-C / SIGTERM: a dedicated thread kills our switches and removes
    // the temp dirs, then exits.
    if let Err(e) = sys::block_stop_signals() {
        eprintln!("loadgen: cannot block signals: {e}");
        return ExitCode::from(71);
    }
    std::thread::spawn(|| {
        if let Ok(sig) = sys::wait_stop_signal() {
            eprintln!("loadgen: signal {sig}: stopping switches and cleaning up");
            target::emergency_cleanup();
            std::process::exit(128 + sig);
        }
    });
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<(), String> {
    let groups: Vec<String> = if cli.only.is_empty() {
        GROUPS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        cli.only.clone()
    };
    if let Some(bad) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        return Err(format!(
            "unknown group {bad:?} (known: {})",
            GROUPS.join(", ")
        ));
    }
    let mut targets = Vec::new();
    for t in &cli.targets {
        let k = Kind::parse(t).ok_or_else(|| format!("unknown target {t:?}"))?;
        if !targets.contains(&k) {
            targets.push(k);
        }
    }
    targets.sort();
    if let Some(p) = cli.ports.iter().find(|&&p| p < 2 || p % 2 != 0 || p > 512) {
        return Err(format!("port count {p}: must be even, 2 to 512"));
    }
    if let Some(s) = cli.sizes.iter().find(|&&s| !(14..=9000).contains(&s)) {
        return Err(format!("frame size {s}: must be 14 to 9000 bytes"));
    }

    let uml_switch = cli.uml_switch.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
            .join("release/uml-switch")
    });
    let binaries = Binaries {
        uml_switch,
        vde_switch: cli.vde_switch.clone(),
        uml_switch_args: cli.uml_switch_arg.clone(),
    };
    if targets.contains(&Kind::UmlSwitch) && !binaries.uml_switch.is_file() {
        return Err(format!(
            "uml-switch binary {} not found (cargo build --release -p uml-switch, or --uml-switch PATH)",
            binaries.uml_switch.display()
        ));
    }
    if targets.contains(&Kind::Vde) && !binaries.vde_switch.is_file() {
        eprintln!(
            "loadgen: {} not found (apt-get install vde2): skipping vde_switch",
            binaries.vde_switch.display()
        );
        targets.retain(|&k| k != Kind::Vde);
    }

    // Configurations, deduplicated, in a stable order.
    let mut configs: Vec<Config> = Vec::new();
    let mut add = |c: Config| {
        if !configs.contains(&c) {
            configs.push(c);
        }
    };
    let has = |g: &str| groups.iter().any(|x| x == g);
    if has("headline") {
        add(Config::Throughput { ports: 2, size: 64 });
        add(Config::Throughput {
            ports: 16,
            size: 64,
        });
    }
    if has("pingpong") {
        add(Config::PingPong);
    }
    if has("sizes") {
        for &size in &cli.sizes {
            add(Config::Throughput { ports: 2, size });
        }
    }
    if has("ports") {
        for &ports in &cli.ports {
            add(Config::Throughput { ports, size: 64 });
        }
    }

    let reps = cli.reps.unwrap_or(if cli.quick { 1 } else { 5 }).max(1);
    let duration = cli.duration.unwrap_or(if cli.quick { 1.0 } else { 2.0 });
    if !(0.1..=600.0).contains(&duration) {
        return Err("duration must be 0.1 to 600 seconds".to_owned());
    }
    let pings = if cli.quick {
        cli.pings.min(2_000)
    } else {
        cli.pings
    }
    .max(10);
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| workspace().join("benches/results"));
    let keep_logs = if cli.keep_logs {
        let dir = out.join("logs");
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Some(dir)
    } else {
        None
    };
    let opts = RunOptions {
        keep_logs,
        configs,
        targets,
        reps,
        duration: Duration::from_secs_f64(duration),
        batch: usize::from(cli.batch),
        rate: cli.rate.filter(|r| *r > 0.0),
        pings,
        ping_warmup: (pings / 10).clamp(100, 2_000),
        binaries,
        verbose: !cli.quiet,
    };
    if opts.verbose {
        eprintln!(
            "loadgen: {} configurations x {} targets x {} reps, {duration} s windows, sendmmsg batch {}, uml-switch {}",
            opts.configs.len(),
            opts.targets.len(),
            reps,
            opts.batch,
            opts.binaries.uml_switch.display()
        );
    }

    let samples = run(&opts);

    let mut md = format!(
        "## loadgen results\n\n{} ({} CPUs); {} reps, {duration} s windows, senders: blocking sendmmsg of {} frames{}, receivers: recvmmsg; uml-switch: {} {}; vde_switch: {}\n\n",
        uname(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        reps,
        opts.batch,
        opts.rate
            .map(|r| format!(" paced to {} frames/s in total", report::thousands(r)))
            .unwrap_or_default(),
        opts.binaries.uml_switch.display(),
        opts.binaries.uml_switch_args.join(" "),
        opts.binaries.vde_switch.display(),
    );
    md.push_str(&report::markdown(&samples));
    print!("{md}");

    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let write = |name: &str, text: &str| -> Result<(), String> {
        let path = out.join(name);
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("loadgen: wrote {}", path.display());
        Ok(())
    };
    write("samples.csv", &report::csv(&samples))?;
    write("report.md", &md)?;
    if let Some(svg) = report::svg_chart(&samples, Sweep::FrameSize { ports: 2 }) {
        write("frames_vs_size.svg", &svg)?;
    }
    if let Some(svg) = report::svg_chart(&samples, Sweep::Ports { size: 64 }) {
        write("frames_vs_ports.svg", &svg)?;
    }
    if samples.iter().any(|s| s.error.is_some()) {
        return Err("some measurements failed (see the table)".to_owned());
    }
    Ok(())
}

/// `uname -srm`-like description of the machine.
fn uname() -> String {
    let read = |p: &str| {
        fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    format!("Linux {}, {model}", read("/proc/sys/kernel/osrelease"))
}
