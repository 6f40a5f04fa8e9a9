//! `loadgen`: measures uml-switch, vde_switch and direct socket pairs side by
//! side with clients that speak the UML daemon protocol like a UML kernel.
//! See `benches/src/bin/loadgen.rs` for the command line.

pub mod client;
pub mod measure;
pub mod report;
pub mod sys;
pub mod target;

use std::io;
use std::time::Duration;

use measure::{Latency, Throughput, ThroughputParams};
use target::{Binaries, Kind, Target};

/// One measured configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// `ports` ports (ports/2 pairs), `size`-byte frames.
    Throughput {
        /// Number of ports.
        ports: usize,
        /// Frame size in bytes.
        size: usize,
    },
    /// Ping-pong round trips between two ports.
    PingPong,
}

impl Config {
    /// Human label for tables.
    pub fn label(&self) -> String {
        match self {
            Config::Throughput { ports, size } => {
                format!("{size} B, {ports} ports ({} pairs)", ports / 2)
            }
            Config::PingPong => "ping-pong RTT p50".to_owned(),
        }
    }
}

/// One measurement.
#[derive(Clone, Debug)]
pub struct Sample {
    /// What was measured.
    pub config: Config,
    /// Against what.
    pub target: Kind,
    /// Repetition number (0-based).
    pub rep: usize,
    /// Throughput result.
    pub throughput: Option<Throughput>,
    /// Latency result.
    pub latency: Option<Latency>,
    /// Why the measurement failed, if it did.
    pub error: Option<String>,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Configurations, in order.
    pub configs: Vec<Config>,
    /// Targets, alternated in this order within each repetition.
    pub targets: Vec<Kind>,
    /// Repetitions per (configuration, target).
    pub reps: usize,
    /// Throughput window.
    pub duration: Duration,
    /// Frames per sendmmsg (1 = sendto).
    pub batch: usize,
    /// Total offered frames/s for throughput runs (None = unlimited).
    pub rate: Option<f64>,
    /// Measured round trips per ping-pong sample.
    pub pings: usize,
    /// Unmeasured warm-up round trips.
    pub ping_warmup: usize,
    /// Switch binaries.
    pub binaries: Binaries,
    /// Print progress to stderr.
    pub verbose: bool,
    /// Copy every switch's log into this directory.
    pub keep_logs: Option<std::path::PathBuf>,
}

/// Measures one configuration against one freshly started target.
pub fn measure_one(
    opts: &RunOptions,
    config: Config,
    kind: Kind,
    rep: usize,
) -> io::Result<Sample> {
    let ports = match config {
        Config::Throughput { ports, .. } => ports,
        Config::PingPong => 2,
    };
    let mut target = Target::start(kind, &opts.binaries, ports)?;
    let mut sample = Sample {
        config,
        target: kind,
        rep,
        throughput: None,
        latency: None,
        error: None,
    };
    match config {
        Config::Throughput { ports, size } => {
            let params = ThroughputParams {
                ports,
                size,
                duration: opts.duration,
                batch: opts.batch,
                rate: opts.rate,
            };
            sample.throughput = Some(measure::throughput(&mut target, params)?);
        }
        Config::PingPong => {
            sample.latency = Some(measure::latency(&mut target, opts.ping_warmup, opts.pings)?);
        }
    }
    let log = opts
        .keep_logs
        .as_ref()
        .filter(|_| kind != Kind::Direct)
        .map(|dir| {
            let name = match config {
                Config::Throughput { ports, size } => format!("tput-{ports}p-{size}B"),
                Config::PingPong => "pingpong".to_owned(),
            };
            dir.join(format!("{name}-{}-rep{}.log", kind.name(), rep + 1))
        });
    target.stop_saving_log(log.as_deref());
    Ok(sample)
}

/// Runs every configuration: for each, `reps` rounds of every target in
/// turn (direct, uml-switch, vde_switch, direct, ...). Failures are recorded
/// in the sample and reported, not fatal.
pub fn run(opts: &RunOptions) -> Vec<Sample> {
    let mut samples = Vec::new();
    let total = opts.configs.len() * opts.reps * opts.targets.len();
    let mut done = 0;
    for &config in &opts.configs {
        for rep in 0..opts.reps {
            for &kind in &opts.targets {
                done += 1;
                let sample = match measure_one(opts, config, kind, rep) {
                    Ok(s) => s,
                    Err(e) => Sample {
                        config,
                        target: kind,
                        rep,
                        throughput: None,
                        latency: None,
                        error: Some(e.to_string()),
                    },
                };
                if opts.verbose {
                    eprintln!("[{done}/{total}] {}", report::describe(&sample));
                }
                samples.push(sample);
            }
        }
    }
    samples
}
