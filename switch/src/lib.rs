//! uml-switch: a userspace Ethernet switch for User-Mode-Linux, vde2 and
//! QEMU clients.
//!
//! The daemon is two threads:
//! - the control plane ([`control`], tokio, current-thread) accepts
//!   clients on the control socket and performs their handshakes;
//! - the data plane ([`dataplane`], `--threads` workers) owns the
//!   forwarding core from `uml-switch-proto`, every port's socket and the
//!   frame buffers, and moves frames in batches.
//!
//! They talk through messages only; no lock guards the forwarding table. [`run`] wires them together; `main.rs`
//! only parses the command line ([`cli`]).
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod connected;
pub mod control;
pub mod dataplane;
mod error;
pub mod files;
mod sys;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

pub use config::Config;
pub use error::Error;

use connected::{ConnectionListener, Transport};
use control::{ControlSocket, DataPlacement, ListenerSetup};
use dataplane::{Dataplane, DataplaneHandle, PortInfo, PortIo};
use files::{Permissions, VdeDir};

/// Runs the switch until SIGINT or SIGTERM; returns after removing the
/// control socket.
pub fn run(config: Config) -> Result<(), Error> {
    config.validate()?;
    let perms = Permissions {
        mode: config.mode,
        gid: config
            .group
            .as_deref()
            .map(files::resolve_group)
            .transpose()?,
    };
    // Made before the runtime and dropped after it: the runtime's tasks
    // remove the data sockets inside it when they are dropped.
    let vde_dir = config
        .vde_dir
        .as_deref()
        .map(|dir| VdeDir::prepare(dir, &perms))
        .transpose()?;
    let hash_seed = RandomState::new().build_hasher().finish();
    let dataplane = Dataplane::spawn(
        config.switch_config(hash_seed),
        config.threads,
        config.busy_poll,
    )
    .map_err(|e| Error::os("cannot start the data plane", e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::os("cannot start the control plane", e))?;
    let result = runtime.block_on(serve(&config, perms, vde_dir.as_ref(), &dataplane.handle));
    drop(runtime);
    dataplane.stop();
    drop(vde_dir);
    result
}

async fn serve(
    config: &Config,
    perms: Permissions,
    vde_dir: Option<&VdeDir>,
    dataplane: &DataplaneHandle,
) -> Result<(), Error> {
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::os("cannot handle SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Error::os("cannot handle SIGINT", e))?;
    for name in &config.taps {
        attach_tap(dataplane, name).await?;
    }
    let setup = |placement| ListenerSetup {
        placement,
        perms,
        handshake_timeout: config.handshake_timeout,
    };
    let vde_ctl = vde_dir
        .map(|dir| {
            let placement = DataPlacement::Directory(dir.path().to_path_buf());
            ControlSocket::bind(&dir.ctl(), setup(placement))
        })
        .transpose()?;
    let bess = ConnectionListener::bind_if_asked(Transport::Bess, config.bess.as_deref(), &perms)?;
    let stream =
        ConnectionListener::bind_if_asked(Transport::Stream, config.stream.as_deref(), &perms)?;
    let sock = config.control_socket();
    let daemon_ctl = sock
        .map(|path| ControlSocket::bind(path, setup(DataPlacement::Abstract)))
        .transpose()?;
    if let Some(ctl) = &daemon_ctl {
        let path = ctl.path().display();
        info!("listening on {path}; UML: eth0=daemon,,unix,{path}");
    }
    if let (Some(dir), Some(ctl)) = (vde_dir, &vde_ctl) {
        let dir = dir.path().display();
        info!(
            "serving vde directory {dir}; vde_plug {dir}, QEMU -netdev vde,sock={dir}, UML eth0=vde,{dir} or eth0=daemon,,unix,{}",
            ctl.path().display()
        );
    }
    info!(
        "uml-switch {} running ({} mode, {} ports)",
        env!("CARGO_PKG_VERSION"),
        if config.hub { "hub" } else { "switch" },
        config.max_ports,
    );
    let serve_on = |ctl: Option<ControlSocket>| {
        let dataplane = dataplane.clone();
        async move {
            match ctl {
                Some(ctl) => ctl.serve(dataplane).await,
                None => std::future::pending().await,
            }
        }
    };
    let serve_connections = |listener: Option<ConnectionListener>| {
        let dataplane = dataplane.clone();
        async move {
            match listener {
                Some(listener) => listener.serve(dataplane).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        result = serve_on(daemon_ctl) => result?,
        result = serve_on(vde_ctl) => result?,
        result = serve_connections(bess) => result?,
        result = serve_connections(stream) => result?,
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
}

async fn attach_tap(dataplane: &DataplaneHandle, name: &str) -> Result<(), Error> {
    let tap_error = |source: std::io::Error| Error::Tap {
        name: name.into(),
        hint: error::tap_hint(&source),
        source,
    };
    let iface = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tap).map_err(tap_error)?;
    iface.set_non_blocking().map_err(tap_error)?;
    let info = PortInfo {
        transport: "tap",
        peer: iface.name().to_owned(),
        description: String::new(),
    };
    let claim = dataplane
        .add_port(PortIo::Tap(iface), info)
        .await
        .map_err(|e| Error::os("the data plane stopped", e))?
        .map_err(|e| Error::Config(format!("tap `{name}`: {e}")))?;
    info!("port {} connected: tap {name}", claim.port);
    Ok(())
}
