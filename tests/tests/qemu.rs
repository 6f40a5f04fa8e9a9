//! End-to-end tests with real QEMU guests (issue 4): a QEMU guest on
//! `-netdev stream` (uml-switch `--stream PATH`) and one on `-netdev vde`
//! (`--vde-dir DIR`, QEMU's libvdeplug support) each ping a real UML guest
//! on the daemon transport (`eth0=daemon,MAC,unix,CTL`) through one switch
//! serving all three.
//!
//! Each test creates a private network namespace and runs the switch, the
//! UML guest and QEMU inside it (UML's data socket has an abstract address,
//! and those are per namespace), so no test traffic leaves the machine.
//! QEMU runs under TCG with a Debian cloud kernel fetched with
//! `apt-get download` into a cache (see `uml_switch_tests::qemu`) and a
//! busybox initramfs built at test time.
//!
//! They need root and Debian's `qemu-system-x86`, `busybox-static`,
//! `user-mode-linux`, `iproute2` and `iputils-ping` (`./run-tests.sh`
//! installs them), plus the apt package lists for the kernel download;
//! without them they fail rather than skip.  Run with `-- --nocapture` to
//! see boot times and round-trip times.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use uml_switch_tests::netns::NetNs;
use uml_switch_tests::qemu::{require_qemu_environment, Netdev, QemuGuest};
use uml_switch_tests::uml::{
    expect_scripted_ping, ping_all_script, require_uml_environment, Guest, SwitchImpl,
    SwitchProcess,
};

/// How long the switch may take to create its vde and stream sockets after
/// its daemon control socket accepts connections.
const SOCKETS_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh scratch directory (short: socket paths must fit in 108 bytes).
fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("uml-qemu-")
        .tempdir()
        .expect("create scratch directory")
}

/// Waits until a unix stream socket at `path` accepts connections.
fn wait_socket(switch: &SwitchProcess, path: &Path) {
    let deadline = Instant::now() + SOCKETS_TIMEOUT;
    while UnixStream::connect(path).is_err() {
        if Instant::now() >= deadline {
            switch.fail(format!(
                "{} did not accept connections within {SOCKETS_TIMEOUT:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which QEMU back end a test uses.
#[derive(Clone, Copy)]
enum Backend {
    Stream,
    Vde,
}

/// One switch (`--sock CTL --vde-dir DIR --stream PATH`) in a fresh
/// namespace, a UML guest on the daemon transport, and a QEMU guest on
/// `backend` that pings the UML guest; prints boot times and rtts.
fn qemu_guest_pings_uml_guest(test: &str, backend: Backend, subnet: &str) {
    require_uml_environment();
    require_qemu_environment();
    let ns = NetNs::new("umlqemu");
    let dir = scratch();
    let ctl = dir.path().join("ctl");
    let vde_dir = dir.path().join("vde");
    let stream = dir.path().join("qemu.sock");
    let mut switch = SwitchProcess::start_with(
        &SwitchImpl::UnderTest(env!("CARGO_BIN_EXE_uml-switch-under-test").into()),
        Some(&ns),
        &ctl,
        &[],
        &[
            "--vde-dir",
            vde_dir.to_str().expect("UTF-8 path"),
            "--stream",
            stream.to_str().expect("UTF-8 path"),
        ],
        &dir.path().join("switch.log"),
    );
    wait_socket(&switch, &vde_dir.join("ctl"));
    wait_socket(&switch, &stream);

    let uml_addr = format!("{subnet}.1");
    let qemu_addr = format!("{subnet}.2");
    // The UML guest waits on its release barrier once eth0 is up.
    let mut uml = Guest::builder_for_socket("uml", &ctl)
        .netns(&ns)
        .mac("02:00:0a:c6:00:01")
        .addr(&format!("{uml_addr}/24"))
        .boot(dir.path());
    let netdev = match backend {
        Backend::Stream => Netdev::Stream(stream.clone()),
        Backend::Vde => Netdev::Vde(vde_dir.clone()),
    };
    let mut qemu = QemuGuest::builder("qemu", netdev)
        .netns(&ns)
        .mac("02:00:0a:c6:00:02")
        .addr(&format!("{qemu_addr}/24"))
        .ping(&uml_addr, 5)
        .boot(dir.path());

    let uml_boot = uml.wait_ready();
    let (qemu_boot, qemu_uptime) = qemu.wait_ready();
    println!(
        "{test}: UML eth0 up after {:.1} s; QEMU eth0 up after {:.1} s \
         (guest uptime {qemu_uptime:.2} s)",
        uml_boot.as_secs_f64(),
        qemu_boot.as_secs_f64(),
    );

    let ping = qemu.wait_ping();
    match ping.stats {
        Some(stats) => println!("{test}: QEMU {qemu_addr} -> UML {uml_addr}: {stats}"),
        None => println!("{test}: QEMU {qemu_addr} -> UML {uml_addr}: no ping summary"),
    }
    if !ping.all_replied() {
        panic!(
            "QEMU guest could not ping the UML guest {uml_addr} (exit code {}):\n{}\n{}\n{}",
            ping.exit_code,
            ping.output,
            qemu.diagnostics(),
            uml.diagnostics()
        );
    }
    qemu.wait_poweroff();
    switch.assert_running();
    uml.halt();
    switch.assert_running();
}

#[test]
fn qemu_stream_guest_pings_uml_guest() {
    qemu_guest_pings_uml_guest(
        "qemu_stream_guest_pings_uml_guest",
        Backend::Stream,
        "10.198.1",
    );
}

#[test]
fn qemu_vde_guest_pings_uml_guest() {
    qemu_guest_pings_uml_guest("qemu_vde_guest_pings_uml_guest", Backend::Vde, "10.198.2");
}

/// Every kind of client on one switch at once — UML on the daemon, vde and
/// vector (bess) transports, QEMU on `-netdev stream` and `-netdev vde`,
/// and a host tap — and every guest pings every other one and the tap;
/// then the tap's namespace pings every guest.
#[test]
fn every_kind_of_client_pings_every_other_through_one_switch() {
    require_uml_environment();
    require_qemu_environment();
    uml_switch_tests::vde::require_vde_plug();
    let ns = NetNs::new("umlall");
    let dir = scratch();
    let ctl = dir.path().join("ctl");
    let vde_dir = dir.path().join("vde");
    let bess = dir.path().join("bess.sock");
    let stream = dir.path().join("qemu.sock");
    let utf8 = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
    let mut switch = SwitchProcess::start_with(
        &SwitchImpl::UnderTest(env!("CARGO_BIN_EXE_uml-switch-under-test").into()),
        Some(&ns),
        &ctl,
        &["alltap0"],
        &[
            "--vde-dir",
            &utf8(&vde_dir),
            "--bess",
            &utf8(&bess),
            "--stream",
            &utf8(&stream),
        ],
        &dir.path().join("switch.log"),
    );
    wait_socket(&switch, &vde_dir.join("ctl"));
    wait_socket(&switch, &stream);
    if !ns.wait_for_link("alltap0", SOCKETS_TIMEOUT) {
        switch.fail("the switch did not create tap alltap0");
    }
    let tap_ip = "10.198.9.10";
    ns.ip_ok(&["addr", "add", &format!("{tap_ip}/24"), "dev", "alltap0"]);
    ns.ip_ok(&["link", "set", "alltap0", "up"]);

    let guests = [
        ("uml-daemon", "10.198.9.1", "02:00:0a:c6:09:01"),
        ("uml-vde", "10.198.9.2", "02:00:0a:c6:09:02"),
        ("uml-bess", "10.198.9.3", "02:00:0a:c6:09:03"),
        ("qemu-stream", "10.198.9.4", "02:00:0a:c6:09:04"),
        ("qemu-vde", "10.198.9.5", "02:00:0a:c6:09:05"),
    ];
    let others = |me: &str| -> Vec<&str> {
        guests
            .iter()
            .filter(|(name, ..)| *name != me)
            .map(|&(_, ip, _)| ip)
            .chain([tap_ip])
            .collect()
    };
    let uml_guest = |builder: uml_switch_tests::uml::GuestBuilder<'_>,
                     (name, ip, mac): (&str, &str, &str)| {
        builder
            .netns(&ns)
            .mac(mac)
            .addr(&format!("{ip}/24"))
            .script(&ping_all_script(&others(name)))
            .boot(dir.path())
    };
    let mut umls = vec![
        uml_guest(Guest::builder_for_socket("uml-daemon", &ctl), guests[0]),
        uml_guest(Guest::builder_for_vde_dir("uml-vde", &vde_dir), guests[1]),
        uml_guest(
            Guest::builder_for_socket("uml-bess", &ctl).bess(&bess),
            guests[2],
        ),
    ];
    let qemu_guest = |netdev: Netdev, (name, ip, mac): (&str, &str, &str)| {
        let mut builder = QemuGuest::builder(name, netdev)
            .netns(&ns)
            .mac(mac)
            .addr(&format!("{ip}/24"));
        for peer in others(name) {
            builder = builder.ping(peer, 3);
        }
        // Up long enough for everybody else to ping it.
        builder
            .hold_before_poweroff(Duration::from_secs(60))
            .boot(dir.path())
    };
    let mut qemus = vec![
        qemu_guest(Netdev::Stream(stream.clone()), guests[3]),
        qemu_guest(Netdev::Vde(vde_dir.clone()), guests[4]),
    ];
    for uml in &mut umls {
        let up = uml.wait_ready();
        println!("{}: up after {:.1} s", uml.name(), up.as_secs_f64());
    }
    for qemu in &mut qemus {
        let (up, _) = qemu.wait_ready();
        println!("{}: up after {:.1} s", qemu.name(), up.as_secs_f64());
    }
    for uml in &mut umls {
        let name = uml.name().to_owned();
        for peer in others(&name) {
            expect_scripted_ping(uml, peer);
        }
    }
    for qemu in &mut qemus {
        let name = qemu.name().to_owned();
        for peer in others(&name) {
            let ping = qemu.wait_ping_of(peer);
            match &ping.stats {
                Some(stats) => println!("{name} -> {peer}: {stats}"),
                None => println!("{name} -> {peer}: no ping summary"),
            }
            if !ping.all_replied() {
                qemu.fail(format!("{name} could not ping {peer}:\n{}", ping.output));
            }
        }
    }
    // The QEMU guests are still holding: the tap's side pings everyone.
    for &(name, ip, _) in &guests {
        let out = ns.run(&["ping", "-c", "2", "-W", "2", ip]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        match uml_switch_tests::uml::parse_ping(&text) {
            Some(stats) if out.status.success() && stats.received == stats.transmitted => {
                println!("tap alltap0 -> {name} {ip}: {stats}")
            }
            _ => switch.fail(format!(
                "the tap's namespace could not ping {name} {ip}:\n{text}"
            )),
        }
    }
    switch.assert_running();
    for uml in &mut umls {
        uml.halt();
    }
    drop(qemus);
    switch.assert_running();
}
