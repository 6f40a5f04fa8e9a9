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

/// A setting for both directions (`VALUE`), or for each (`A2B:B2A`: first
/// endpoint to second, then second to first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerDirection<T>(pub T, pub T);

impl<T: Copy + std::str::FromStr> PerDirection<T> {
    fn parse(text: &str) -> Result<Self, String> {
        let value = |v: &str| {
            v.trim()
                .parse::<T>()
                .map_err(|_| format!("`{v}` is not a number"))
        };
        match text.split_once(':') {
            None => value(text).map(|v| PerDirection(v, v)),
            Some((a, b)) => Ok(PerDirection(value(a)?, value(b)?)),
        }
    }

    /// Direction 0 (first → second) or 1 (second → first).
    fn get(&self, direction: usize) -> T {
        if direction == 0 {
            self.0
        } else {
            self.1
        }
    }
}

/// A cable between two network endpoints, with optional link emulation
/// (each option for both directions, or `A2B:B2A`).
#[derive(Debug, Parser)]
#[command(name = "uml-plug", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The endpoints: one (the other is stdin/stdout), two, or
    /// `ENDPOINT = COMMAND...` (the command's stdin/stdout, as dpipe).
    #[arg(required = true, num_args = 1.., value_name = "ENDPOINT")]
    pub endpoints: Vec<String>,
    /// Percentage of frames lost.
    #[arg(long, value_name = "PCT[:PCT]", default_value = "0", value_parser = PerDirection::<f64>::parse)]
    pub loss: PerDirection<f64>,
    /// Delay in milliseconds.
    #[arg(long, value_name = "MS[:MS]", default_value = "0", value_parser = PerDirection::<u64>::parse)]
    pub delay: PerDirection<u64>,
    /// Delay variation in milliseconds (uniform, ±).
    #[arg(long, value_name = "MS[:MS]", default_value = "0", value_parser = PerDirection::<u64>::parse)]
    pub jitter: PerDirection<u64>,
    /// Percentage of frames duplicated.
    #[arg(long, value_name = "PCT[:PCT]", default_value = "0", value_parser = PerDirection::<f64>::parse)]
    pub dup: PerDirection<f64>,
    /// Percentage of frames delivered out of order.
    #[arg(long, value_name = "PCT[:PCT]", default_value = "0", value_parser = PerDirection::<f64>::parse)]
    pub reorder: PerDirection<f64>,
    /// Percentage of frames with one bit flipped.
    #[arg(long, value_name = "PCT[:PCT]", default_value = "0", value_parser = PerDirection::<f64>::parse)]
    pub corrupt: PerDirection<f64>,
    /// Link rate in bits per second (frames queue, then drop); 0 = unlimited.
    #[arg(long, value_name = "BPS[:BPS]", default_value = "0", value_parser = PerDirection::<u64>::parse)]
    pub rate: PerDirection<u64>,
    /// Largest frame carried, longer ones are dropped; 0 = no limit.
    #[arg(long, value_name = "BYTES[:BYTES]", default_value = "0", value_parser = PerDirection::<usize>::parse)]
    pub mtu: PerDirection<usize>,
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
    /// The link model of each direction: (first → second, second → first).
    fn impair_configs(&self) -> Result<(ImpairConfig, ImpairConfig), PlugError> {
        let config = |d: usize| {
            let config = ImpairConfig {
                loss_pct: self.loss.get(d),
                dup_pct: self.dup.get(d),
                reorder_pct: self.reorder.get(d),
                corrupt_pct: self.corrupt.get(d),
                delay: Duration::from_millis(self.delay.get(d)),
                jitter: Duration::from_millis(self.jitter.get(d)),
                rate_bps: Some(self.rate.get(d)).filter(|&r| r > 0),
                mtu: Some(self.mtu.get(d)).filter(|&m| m > 0),
                max_in_flight: self.max_in_flight,
            };
            config.validate().map_err(PlugError::Usage)?;
            Ok(config)
        };
        Ok((config(0)?, config(1)?))
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

/// SIGINT, SIGTERM and SIGHUP end the cable like an EOF does, so that
/// `--stats` still prints and the exit status is 0.
fn stop_on_signals(ender: &mpsc::Sender<crate::endpoint::End>) -> Result<(), PlugError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| PlugError::Usage(format!("cannot handle signals: {e}")))?;
    let ender = ender.clone();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = ender.send(crate::endpoint::End {
                result: Ok(format!("stopped by signal {signal}")),
            });
        }
    });
    Ok(())
}

fn run(cli: &Cli) -> Result<(), PlugError> {
    let configs = cli.impair_configs()?;
    let (a_text, b_text) = cli.endpoint_texts()?;
    let (a_spec, b_spec) = (Spec::parse(&a_text)?, Spec::parse(&b_text)?);
    let seed = cli
        .seed
        .unwrap_or_else(|| RandomState::new().build_hasher().finish());
    let (ender, ended) = mpsc::channel();
    let a = a_spec.open(&a_text, &ender)?;
    let b = b_spec.open(&b_text, &ender)?;
    let (forward, backward) = pump::start(a, b, &configs, seed, &ender);
    stop_on_signals(&ender)?;
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
        if !(configs.0.is_transparent() && configs.1.is_transparent()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_apply_to_both_directions_or_each() {
        assert_eq!(
            PerDirection::<f64>::parse("10"),
            Ok(PerDirection(10.0, 10.0))
        );
        assert_eq!(
            PerDirection::<u64>::parse("100:0"),
            Ok(PerDirection(100, 0))
        );
        assert!(PerDirection::<u64>::parse("x").is_err());
        assert!(PerDirection::<u64>::parse("1:").is_err());
    }

    #[test]
    fn endpoints_one_two_or_a_command() {
        let cli = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("uml-plug").chain(args.iter().copied())).unwrap()
        };
        assert_eq!(
            cli(&["a"]).endpoint_texts().unwrap(),
            ("a".into(), "-".into())
        );
        assert_eq!(
            cli(&["a", "b"]).endpoint_texts().unwrap(),
            ("a".into(), "b".into())
        );
        assert_eq!(
            cli(&["a", "=", "ssh", "h", "uml-plug", "b"])
                .endpoint_texts()
                .unwrap(),
            ("a".into(), "cmd://ssh h uml-plug b".into())
        );
        assert!(cli(&["a", "b", "c"]).endpoint_texts().is_err());
        let both = cli(&["--loss", "5:1", "a", "b"]).impair_configs().unwrap();
        assert_eq!((both.0.loss_pct, both.1.loss_pct), (5.0, 1.0));
        assert!(cli(&["--loss", "101", "a", "b"]).impair_configs().is_err());
    }
}
