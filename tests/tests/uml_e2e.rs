//! End-to-end tests with real User-Mode-Linux guests.
//!
//! Each test creates a private network namespace, runs the switch and the
//! guests inside it (UML's daemon-transport data socket is an abstract unix
//! address, which is per namespace) and deletes the namespace at the end, so
//! no test traffic leaves the machine.  The guests boot the host's own root
//! file system through hostfs; see `uml_switch_tests::uml`.
//!
//! These tests need root and Debian's `user-mode-linux`, `iproute2`,
//! `iputils-ping` and `busybox` packages (`./run-tests.sh` installs them);
//! without them they fail rather than skip.  Run with `-- --nocapture` to
//! see boot times and round-trip times.  `UML_E2E_SWITCH=uml_switch` runs
//! them against the old `uml_switch` from uml-utilities instead of ours
//! (handy to tell harness problems from switch problems).
//! `UML_E2E_SWITCH=vde_switch cargo test --test uml_e2e vde` runs the test of
//! the vde directory layout against vde2's `vde_switch` (the other tests
//! need the daemon layout that vde_switch does not serve).

use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use uml_switch_tests::netns::NetNs;
use uml_switch_tests::uml::{
    parse_ping, require_uml_environment, Guest, SwitchImpl, SwitchProcess,
};
use uml_switch_tests::vde::require_vde_plug;

/// The switch these tests run: ours, unless `UML_E2E_SWITCH` says otherwise.
fn switch_impl() -> SwitchImpl {
    SwitchImpl::from_env(env!("CARGO_BIN_EXE_uml-switch-under-test"))
}

/// A fresh scratch directory for one test (control socket, logs, guest run
/// directories); short, because socket paths must fit in 108 bytes.
fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("uml-e2e-")
        .tempdir()
        .expect("create scratch directory")
}

/// Starts the switch inside `ns` with its control socket and log in `dir`.
fn start_switch(ns: &NetNs, dir: &Path, taps: &[&str]) -> SwitchProcess {
    SwitchProcess::start(
        &switch_impl(),
        Some(ns),
        &dir.join("ctl"),
        taps,
        &dir.join("switch.log"),
    )
}

/// Waits for `guest`'s ping report, prints it, and panics (with the guest
/// console and switch log) unless every echo request was answered.
fn expect_guest_ping(guest: &mut Guest, peer: &str) {
    let ping = guest.wait_ping();
    match ping.stats {
        Some(stats) => println!("{} -> {peer}: {stats}", guest.name()),
        None => println!("{} -> {peer}: no ping summary", guest.name()),
    }
    if !ping.all_replied() {
        guest.fail(format!(
            "guest {} could not ping {peer} (exit code {}):\n{}",
            guest.name(),
            ping.exit_code,
            ping.output
        ));
    }
}

#[test]
fn two_guests_ping_each_other() {
    require_uml_environment();
    let ns = NetNs::new("umle2e");
    let dir = scratch();
    let mut switch = start_switch(&ns, dir.path(), &[]);

    let mut a = Guest::builder("a", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:00:01")
        .addr("10.199.1.1/24")
        .ping("10.199.1.2", 3)
        .boot(dir.path());
    let mut b = Guest::builder("b", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:00:02")
        .addr("10.199.1.2/24")
        .ping("10.199.1.1", 3)
        .boot(dir.path());

    let boot_a = a.wait_ready();
    let boot_b = b.wait_ready();
    println!(
        "two_guests_ping_each_other: eth0 up after {:.1} s (a), {:.1} s (b)",
        boot_a.as_secs_f64(),
        boot_b.as_secs_f64()
    );

    // Both guests stay up (barrier) until both pings are done.
    expect_guest_ping(&mut a, "10.199.1.2");
    expect_guest_ping(&mut b, "10.199.1.1");
    switch.assert_running();

    a.halt();
    b.halt();
    switch.assert_running();
}

#[test]
fn guest_and_tap_ping_each_other() {
    require_uml_environment();
    let ns = NetNs::new("umle2e");
    let dir = scratch();
    let mut switch = start_switch(&ns, dir.path(), &["umltap0"]);
    if !ns.wait_for_link("umltap0", Duration::from_secs(10)) {
        switch.fail(format!(
            "the switch did not create tap umltap0 in namespace {}",
            ns.name()
        ));
    }
    ns.ip_ok(&["addr", "add", "10.199.2.1/24", "dev", "umltap0"]);
    ns.ip_ok(&["link", "set", "umltap0", "up"]);

    let mut guest = Guest::builder("g", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:00:03")
        .addr("10.199.2.2/24")
        .ping("10.199.2.1", 3)
        .boot(dir.path());
    let boot = guest.wait_ready();
    println!(
        "guest_and_tap_ping_each_other: eth0 up after {:.1} s",
        boot.as_secs_f64()
    );
    expect_guest_ping(&mut guest, "10.199.2.1");

    // The guest now waits on its barrier: ping it from the tap's side.
    let out = ns.run(&["ping", "-c", "3", "-W", "2", "10.199.2.2"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let stats = parse_ping(&text);
    match stats {
        Some(stats) => println!("tap umltap0 -> 10.199.2.2: {stats}"),
        None => println!("tap umltap0 -> 10.199.2.2: no ping summary"),
    }
    let all_replied = stats.is_some_and(|s| s.transmitted > 0 && s.received == s.transmitted);
    if !out.status.success() || !all_replied {
        guest.fail(format!(
            "ping from namespace {} to the guest failed ({}):\n{text}",
            ns.name(),
            out.status
        ));
    }
    switch.assert_running();

    guest.halt();
    switch.assert_running();
}

#[test]
fn vde_transport_and_daemon_guests_ping_each_other_through_a_vde_dir() {
    require_uml_environment();
    // UML's vde transport runs vde_plug as its helper.
    require_vde_plug();
    let ns = NetNs::new("umlvde");
    let dir = scratch();
    let vde_dir = dir.path().join("vde");
    let mut switch = SwitchProcess::start_vde(
        &switch_impl(),
        Some(&ns),
        &vde_dir,
        &dir.path().join("switch.log"),
    );

    // a: eth0=vde,DIR,MAC (libvdeplug); b: eth0=daemon,MAC,unix,DIR/ctl.
    let mut a = Guest::builder_vde("a", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:00:05")
        .addr("10.199.3.1/24")
        .ping("10.199.3.2", 3)
        .boot(dir.path());
    let mut b = Guest::builder("b", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:00:06")
        .addr("10.199.3.2/24")
        .ping("10.199.3.1", 3)
        .boot(dir.path());

    let boot_a = a.wait_ready();
    let boot_b = b.wait_ready();
    println!(
        "vde_transport_and_daemon_guests_ping_each_other_through_a_vde_dir: eth0 up after \
         {:.1} s (a, vde), {:.1} s (b, daemon)",
        boot_a.as_secs_f64(),
        boot_b.as_secs_f64()
    );

    expect_guest_ping(&mut a, "10.199.3.2");
    expect_guest_ping(&mut b, "10.199.3.1");
    switch.assert_running();

    a.halt();
    b.halt();
    switch.assert_running();
    // Both ports are gone once the guests have halted: no data socket left.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !uml_switch_tests::vde::data_sockets(&vde_dir).is_empty() {
        if std::time::Instant::now() >= deadline {
            switch.fail(format!(
                "data sockets left in {} after both guests halted: {:?}",
                vde_dir.display(),
                uml_switch_tests::vde::data_sockets(&vde_dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
