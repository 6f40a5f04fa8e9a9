//! The ends a cable can join, parsed from vdeplug4-style URLs.

mod net;
mod pcap;
mod stream;
mod switch;
mod tap;

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::mpsc::Sender;

use crate::error::PlugError;

/// Receives frames from an endpoint.
pub trait FrameRx: Send {
    /// Waits for the next frame and copies it into `buf`; `Ok(None)` when
    /// the endpoint has ended.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
}

/// Sends frames to an endpoint.
pub trait FrameTx: Send {
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// An endpoint's two halves.
pub type Halves = (Box<dyn FrameRx>, Box<dyn FrameTx>);

/// How a cable ended, reported by whichever part saw it first.
#[derive(Debug)]
pub struct End {
    /// `Ok` for an orderly end (EOF), `Err` for a failure.
    pub result: Result<String, PlugError>,
}

/// An open endpoint, split into its two halves.
pub struct Opened {
    /// For messages: the endpoint as the user wrote it.
    pub name: String,
    /// Where frames come from.
    pub rx: Box<dyn FrameRx>,
    /// Where frames go.
    pub tx: Box<dyn FrameTx>,
}

/// An endpoint, as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `uml://PATH`: a daemon-protocol control socket (uml-switch --sock).
    Uml { ctl: PathBuf },
    /// `vde://DIR[PORT]`: a vde_switch-style directory.
    Vde { dir: PathBuf, port: u32 },
    /// `-` or `stdio`: stdin/stdout with vde_plug's 2-byte length framing.
    Stdio,
    /// `cmd://COMMAND`: the same framing over a child's stdin/stdout.
    Cmd { command: String },
    /// `tap://NAME`: a host tap interface.
    Tap { name: String },
    /// `udp://[LOCAL:]LPORT->HOST:PORT`: a raw frame per datagram.
    Udp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// `vxlan://REMOTE[:PORT][,REMOTE...]?vni=N&local=ADDR[:PORT]`:
    /// RFC 7348 to one or more unicast peers (head-end replication).
    Vxlan {
        remotes: Vec<SocketAddr>,
        local: SocketAddr,
        vni: u32,
    },
    /// `pcap://FILE`: a capture file (write only).
    Pcap { file: PathBuf },
}

fn bad(text: &str, why: impl Into<String>) -> PlugError {
    PlugError::BadEndpoint {
        text: text.into(),
        why: why.into(),
    }
}

/// Parses `ADDR:PORT`, `[V6]:PORT`, or a bare address with `default_port`.
fn socket_addr(text: &str, default_port: u16, whole: &str) -> Result<SocketAddr, PlugError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .map_err(|_| {
            bad(
                whole,
                format!("`{text}` is not an address (give ADDR or ADDR:PORT)"),
            )
        })?;
    Ok(SocketAddr::new(ip, default_port))
}

impl Spec {
    /// Parses an endpoint. A bare path names a vde directory if it is a
    /// directory (with an optional `[PORT]`), else a daemon control socket.
    pub fn parse(text: &str) -> Result<Spec, PlugError> {
        if text == "-" || text == "stdio" || text == "stdio://" {
            return Ok(Spec::Stdio);
        }
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => return Self::parse_path(text),
        };
        match scheme {
            "uml" => Ok(Spec::Uml { ctl: rest.into() }),
            "vde" => Self::parse_vde(rest, text),
            "cmd" => {
                let command = rest.trim();
                let command = command
                    .strip_prefix('"')
                    .and_then(|c| c.strip_suffix('"'))
                    .unwrap_or(command);
                if command.is_empty() {
                    return Err(bad(text, "cmd:// needs a command"));
                }
                Ok(Spec::Cmd {
                    command: command.into(),
                })
            }
            "tap" if !rest.is_empty() && rest.len() < 16 => Ok(Spec::Tap { name: rest.into() }),
            "tap" => Err(bad(text, "tap:// needs an interface name of 1 to 15 characters")),
            "udp" => {
                let (local, remote) = rest
                    .split_once("->")
                    .ok_or_else(|| bad(text, "expected udp://[LOCAL:]LPORT->HOST:PORT"))?;
                let local = match local.parse::<u16>() {
                    Ok(port) => SocketAddr::from(([0, 0, 0, 0], port)),
                    Err(_) => socket_addr(local, 0, text)?,
                };
                let remote = remote
                    .parse::<SocketAddr>()
                    .map_err(|_| bad(text, format!("`{remote}` is not HOST:PORT")))?;
                Ok(Spec::Udp { local, remote })
            }
            "vxlan" => Self::parse_vxlan(rest, text),
            "pcap" if !rest.is_empty() => Ok(Spec::Pcap { file: rest.into() }),
            "pcap" => Err(bad(text, "pcap:// needs a file name")),
            other => Err(bad(
                text,
                format!("unknown scheme `{other}://` (known: uml, vde, stdio, cmd, tap, udp, vxlan, pcap)"),
            )),
        }
    }

    fn parse_path(text: &str) -> Result<Spec, PlugError> {
        let (path, _) = split_port(text);
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => Self::parse_vde(text, text),
            Ok(meta) if meta.file_type().is_socket() => Ok(Spec::Uml { ctl: text.into() }),
            Ok(_) => Err(bad(text, "neither a vde directory nor a control socket")),
            Err(e) => Err(bad(
                text,
                format!("{e} (give uml://PATH or vde://DIR to be explicit)"),
            )),
        }
    }

    fn parse_vde(rest: &str, whole: &str) -> Result<Spec, PlugError> {
        let (dir, port) = split_port(rest);
        let port = match port {
            None => 0,
            Some(text) => text
                .trim_start_matches("port=")
                .parse::<u32>()
                .ok()
                .filter(|&p| p < 1 << 24)
                .ok_or_else(|| bad(whole, format!("`[{text}]` is not a port number")))?,
        };
        if dir.is_empty() {
            return Err(bad(whole, "vde:// needs a directory"));
        }
        Ok(Spec::Vde {
            dir: dir.into(),
            port,
        })
    }

    fn parse_vxlan(rest: &str, whole: &str) -> Result<Spec, PlugError> {
        use uml_switch_proto::wire::VXLAN_PORT;
        let (remotes, query) = rest.split_once('?').unwrap_or((rest, ""));
        let remotes = remotes
            .split(',')
            .map(|r| socket_addr(r, VXLAN_PORT, whole))
            .collect::<Result<Vec<_>, _>>()?;
        let remote = remotes[0];
        if remotes.iter().any(|r| r.is_ipv4() != remote.is_ipv4()) {
            return Err(bad(whole, "the peers mix IPv4 and IPv6"));
        }
        let mut vni = 1;
        let mut local = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("vni", v)) => {
                    vni = v
                        .parse::<u32>()
                        .ok()
                        .filter(|&v| v < 1 << 24)
                        .ok_or_else(|| bad(whole, format!("vni `{v}` is not 0 to 16777215")))?;
                }
                Some(("local", l)) => local = Some(socket_addr(l, VXLAN_PORT, whole)?),
                _ => {
                    return Err(bad(
                        whole,
                        format!("unknown vxlan option `{pair}` (known: vni=N, local=ADDR[:PORT])"),
                    ))
                }
            }
        }
        let local = local.unwrap_or_else(|| {
            let any: std::net::IpAddr = if remote.is_ipv4() {
                [0, 0, 0, 0].into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            SocketAddr::new(any, VXLAN_PORT)
        });
        Ok(Spec::Vxlan {
            remotes,
            local,
            vni,
        })
    }

    /// Opens the endpoint. Parts that watch it on their own (a switch's
    /// control connection, a child process) report its end to `ender`.
    pub fn open(&self, text: &str, ender: &Sender<End>) -> Result<Opened, PlugError> {
        let (rx, tx): Halves = match self {
            Spec::Uml { ctl } => switch::open(text, ctl, 0, ender)?,
            Spec::Vde { dir, port } => switch::open(text, &dir.join("ctl"), *port, ender)?,
            Spec::Stdio => stream::open_stdio(),
            Spec::Cmd { command } => stream::open_command(text, command)?,
            Spec::Tap { name } => tap::open(text, name)?,
            Spec::Udp { local, remote } => net::open_udp(text, *local, *remote)?,
            Spec::Vxlan {
                remotes,
                local,
                vni,
            } => net::open_vxlan(text, *local, remotes, *vni)?,
            Spec::Pcap { file } => pcap::open(text, file)?,
        };
        Ok(Opened {
            name: text.into(),
            rx,
            tx,
        })
    }
}

/// Splits `DIR[PORT]` into `DIR` and `PORT`.
fn split_port(text: &str) -> (&str, Option<&str>) {
    match text.strip_suffix(']').and_then(|t| t.rsplit_once('[')) {
        Some((dir, port)) => (dir, Some(port)),
        None => (text, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(Spec::parse("-").unwrap(), Spec::Stdio);
        assert_eq!(
            Spec::parse("uml:///tmp/uml.ctl").unwrap(),
            Spec::Uml {
                ctl: "/tmp/uml.ctl".into()
            }
        );
        assert_eq!(
            Spec::parse("vde:///run/vde[5]").unwrap(),
            Spec::Vde {
                dir: "/run/vde".into(),
                port: 5
            }
        );
        assert_eq!(
            Spec::parse("vde:///run/vde[port=7]").unwrap(),
            Spec::Vde {
                dir: "/run/vde".into(),
                port: 7
            }
        );
        assert_eq!(
            Spec::parse("cmd://\"ssh host uml-plug /b\"").unwrap(),
            Spec::Cmd {
                command: "ssh host uml-plug /b".into()
            }
        );
        assert_eq!(
            Spec::parse("udp://5000->127.0.0.1:5001").unwrap(),
            Spec::Udp {
                local: "0.0.0.0:5000".parse().unwrap(),
                remote: "127.0.0.1:5001".parse().unwrap()
            }
        );
        assert_eq!(
            Spec::parse("vxlan://10.1.0.2?vni=42&local=10.1.0.1").unwrap(),
            Spec::Vxlan {
                remotes: vec!["10.1.0.2:4789".parse().unwrap()],
                local: "10.1.0.1:4789".parse().unwrap(),
                vni: 42
            }
        );
        assert_eq!(
            Spec::parse("vxlan://10.1.0.2,10.1.0.3:8472").unwrap(),
            Spec::Vxlan {
                remotes: vec![
                    "10.1.0.2:4789".parse().unwrap(),
                    "10.1.0.3:8472".parse().unwrap()
                ],
                local: "0.0.0.0:4789".parse().unwrap(),
                vni: 1
            }
        );
        assert_eq!(
            Spec::parse("tap://t0").unwrap(),
            Spec::Tap { name: "t0".into() }
        );
        assert_eq!(
            Spec::parse("pcap:///tmp/x.pcap").unwrap(),
            Spec::Pcap {
                file: "/tmp/x.pcap".into()
            }
        );
    }

    #[test]
    fn bad_urls_say_why() {
        for text in [
            "nope://x",
            "vde://d[x]",
            "vxlan://10.0.0.1?vni=99999999",
            "vxlan://10.0.0.1?color=red",
            "udp://1->nothere",
            "tap://",
            "tap://a-name-that-is-far-too-long",
            "cmd://",
            "/no/such/path/anywhere",
        ] {
            let err = Spec::parse(text).unwrap_err();
            assert!(
                matches!(err, PlugError::BadEndpoint { .. }),
                "{text}: {err}"
            );
            assert!(err.to_string().contains(text), "{err}");
        }
    }
}
