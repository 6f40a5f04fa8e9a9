//! The command line of `uml-plug`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use uml_switch_proto::ImpairConfig;

use crate::endpoint::Spec;
use crate::error::PlugError;
use crate::pump;

const EXAMPLES: &str = "\
Endpoints:
  uml://PATH            a uml-switch control socket (--sock PATH)
  vde://DIR[PORT]       a vde_switch-style directory (uml-switch --vde-dir, or vde_switch -s)
  PATH                  either of the above, by looking at it
  - | stdio             stdin/stdout, framed as vde_plug frames them
  cmd://COMMAND         the same framing over `sh -c COMMAND`'s stdin/stdout
  tap://NAME            a host tap interface (created if missing)
  udp://[LOCAL:]LPORT->HOST:PORT   a raw frame per UDP datagram
  vxlan://REMOTE[:PORT]?vni=N&local=ADDR[:PORT]   VXLAN (RFC 7348) to one peer
  pcap://FILE           a capture file (write only)

Examples:
  uml-plug uml:///run/a.ctl uml:///run/b.ctl               join two switches
  uml-plug /run/a.ctl = ssh host uml-plug /run/b.ctl        across machines (as dpipe)
  uml-plug --loss 5 --delay 40 --seed 1 uml:///run/a.ctl vde:///run/vde
  uml-plug uml:///run/a.ctl 'vxlan://192.0.2.2?vni=42&local=192.0.2.1'";

/// A cable between two network endpoints, with optional link emulation
/// (applied to both directions).
#[derive(Debug, Parser)]
#[command(name = "uml-plug", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The endpoints: one (the other is stdin/stdout), two, or
    /// `ENDPOINT = COMMAND...` (the command's stdin/stdout, as dpipe).
    #[arg(required = true, num_args = 1.., value_name = "ENDPOINT")]
    pub endpoints: Vec<String>,
    /// Percentage of frames lost.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub loss: f64,
    /// Delay in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay: u64,
    /// Delay variation in milliseconds (uniform, ±).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub jitter: u64,
    /// Percentage of frames duplicated.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub dup: f64,
    /// Percentage of frames delivered out of order.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub reorder: f64,
    /// Percentage of frames with one byte corrupted.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub corrupt: f64,
    /// Link rate in bits per second (frames queue, then drop).
    #[arg(long, value_name = "BITS_PER_SEC")]
    pub rate: Option<u64>,
    /// Largest frame carried; longer ones are dropped.
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<usize>,
    /// Frames in flight per direction before new ones are dropped.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Seed of the link model: the same seed gives the same losses.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Print each direction's counters to stderr at exit.
    #[arg(long)]
    pub stats: bool,
}

impl Cli {
    fn impair_config(&self) -> Result<ImpairConfig, PlugError> {
        let config = ImpairConfig {
            loss_pct: self.loss,
            dup_pct: self.dup,
            reorder_pct: self.reorder,
            corrupt_pct: self.corrupt,
            delay: Duration::from_millis(self.delay),
            jitter: Duration::from_millis(self.jitter),
            rate_bps: self.rate,
            mtu: self.mtu,
            max_in_flight: self.max_in_flight,
        };
        config.validate().map_err(PlugError::Usage)?;
        Ok(config)
    }

    /// The two endpoints as written: `A`, `A B`, or `A = COMMAND...`.
    fn endpoint_texts(&self) -> Result<(String, String), PlugError> {
        match self.endpoints.as_slice() {
            [a] => Ok((a.clone(), "-".into())),
            [a, b] => Ok((a.clone(), b.clone())),
            [a, eq, command @ ..] if eq == "=" && !command.is_empty() => {
                Ok((a.clone(), format!("cmd://{}", command.join(" "))))
            }
            _ => Err(PlugError::Usage(
                "give one endpoint, two, or `ENDPOINT = COMMAND...`".into(),
            )),
        }
    }
}

/// The whole program. Exit status: 0 when a side ended normally (EOF),
/// 64 usage, 69 a switch refused or went away, 71/74/77 OS, I/O and
/// permission errors.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uml-plug: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: &Cli) -> Result<(), PlugError> {
    let config = cli.impair_config()?;
    let (a_text, b_text) = cli.endpoint_texts()?;
    let (a_spec, b_spec) = (Spec::parse(&a_text)?, Spec::parse(&b_text)?);
    let seed = cli
        .seed
        .unwrap_or_else(|| RandomState::new().build_hasher().finish());
    let (ender, ended) = mpsc::channel();
    let a = a_spec.open(&a_text, &ender)?;
    let b = b_spec.open(&b_text, &ender)?;
    let (forward, backward) = pump::start(a, b, &config, seed, &ender);
    if cli.stats && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        // A live line on a terminal; the final counters follow at exit.
        let (forward, backward) = (forward.clone(), backward.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            eprint!(
                "\ruml-plug: -> {} | <- {}   ",
                forward.summary(),
                backward.summary()
            );
        });
    }
    let end = ended.recv().expect("the pump reports how it ends");
    if cli.stats {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
        eprintln!("uml-plug: {a_text} -> {b_text}: {}", forward.summary());
        eprintln!("uml-plug: {b_text} -> {a_text}: {}", backward.summary());
        if !config.is_transparent() {
            eprintln!("uml-plug: link model seed {seed}");
        }
    }
    match end.result {
        Ok(why) => {
            if cli.stats {
                eprintln!("uml-plug: {why}");
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
