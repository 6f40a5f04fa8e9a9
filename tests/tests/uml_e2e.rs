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
    expect_scripted_ping, parse_ping, ping_all_script, require_uml_environment, Guest, SwitchImpl,
    SwitchProcess,
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

/// Waits for the result of the second ping a guest's script ran (files
/// `ping2.out`, then `ping2.rc`), prints it, and panics unless every echo
/// request was answered.
fn expect_guest_second_ping(guest: &mut Guest, peer: &str, what: &str) {
    let rc = guest.wait_file("ping2.rc", Duration::from_secs(90));
    let output = std::fs::read_to_string(guest.run_dir().join("ping2.out"))
        .unwrap_or_else(|e| guest.fail(format!("ping2.out: {e}")));
    let stats = parse_ping(&output);
    match stats {
        Some(stats) => println!("{} -> {peer} {what}: {stats}", guest.name()),
        None => println!("{} -> {peer} {what}: no ping summary", guest.name()),
    }
    let all_replied = stats.is_some_and(|s| s.transmitted > 0 && s.received == s.transmitted);
    if rc.trim() != "0" || !all_replied {
        guest.fail(format!(
            "guest {} could not ping {peer} {what} (exit code {}):\n{output}",
            guest.name(),
            rc.trim()
        ));
    }
}

#[test]
fn bess_vector_guest_pings_a_daemon_guest_and_reconnects_after_link_bounce() {
    require_uml_environment();
    let ns = NetNs::new("umlbess");
    let dir = scratch();
    let bess = dir.path().join("bess.sock");
    let bess_arg = bess.to_str().expect("UTF-8 scratch path");
    let mut switch = SwitchProcess::start_with(
        &switch_impl(),
        Some(&ns),
        &dir.path().join("ctl"),
        &[],
        &["--bess", bess_arg],
        &dir.path().join("switch.log"),
    );

    // a: vec0:transport=bess,dst=PATH,mac=MAC; b: eth0=daemon,MAC,unix,CTL.
    // After its first ping, a waits (bounded) for the host's go-ahead, so
    // that b's ping is over before a bounces its link: down closes the
    // connection, up reconnects (a new port), then a pings again.
    let mut a = Guest::builder("a", &switch)
        .bess(&bess)
        .netns(&ns)
        .mac("02:00:0a:09:00:07")
        .addr("10.199.4.1/24")
        .ping("10.199.4.2", 3)
        .script(
            r#"
ticks=0
while [ ! -e "$DIR/bounce" ] && [ "$ticks" -lt 300 ]; do
    sleep 0.2
    ticks=$((ticks + 1))
done
ip link set vec0 down
echo "E2E: vec0 down"
sleep 0.5
ip link set vec0 up && echo "E2E: vec0 up again"
tries=0
until ping -c 1 -W 1 10.199.4.2 >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -ge 30 ] && break
    sleep 0.2
done
ping -c 3 -W 2 10.199.4.2 >"$DIR/ping2.tmp" 2>&1
echo $? >"$DIR/ping2.rc.tmp"
echo "E2E: second ping exited $(cat "$DIR/ping2.rc.tmp") after $tries failed probes"
cat "$DIR/ping2.tmp"
mv "$DIR/ping2.tmp" "$DIR/ping2.out"
mv "$DIR/ping2.rc.tmp" "$DIR/ping2.rc"
"#,
        )
        .boot(dir.path());
    let mut b = Guest::builder("b", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:00:08")
        .addr("10.199.4.2/24")
        .ping("10.199.4.1", 3)
        .boot(dir.path());

    let boot_a = a.wait_ready();
    let boot_b = b.wait_ready();
    println!(
        "bess_vector_guest_pings_a_daemon_guest_and_reconnects_after_link_bounce: interface up \
         after {:.1} s (a, vec0 bess), {:.1} s (b, eth0 daemon)",
        boot_a.as_secs_f64(),
        boot_b.as_secs_f64()
    );

    expect_guest_ping(&mut a, "10.199.4.2");
    expect_guest_ping(&mut b, "10.199.4.1");
    switch.assert_running();

    std::fs::write(a.run_dir().join("bounce"), b"").expect("write the bounce barrier");
    expect_guest_second_ping(&mut a, "10.199.4.2", "after ip link down/up");
    switch.assert_running();

    // The switch saw the bess guest connect twice and leave once.
    let log = std::fs::read_to_string(switch.log()).unwrap_or_default();
    let connects = log.matches("connected: bess client").count();
    if connects < 2 || !log.contains("disconnected (bess client") {
        switch.fail(format!(
            "expected two bess connections and a disconnection in the log, saw {connects} \
             connections"
        ));
    }

    a.halt();
    b.halt();
    switch.assert_running();
}

/// One switch serving every way in at once: a guest on the daemon
/// transport (`--sock`), one on the vde transport (`--vde-dir`, through
/// vde_plug) and one on the vector transport (`--bess`); every guest pings
/// every other.
#[test]
fn guests_on_every_uml_transport_ping_each_other_through_one_switch() {
    require_uml_environment();
    require_vde_plug();
    let ns = NetNs::new("umlmix");
    let dir = scratch();
    let vde_dir = dir.path().join("vde");
    let bess = dir.path().join("bess.sock");
    let switch = SwitchProcess::start_with(
        &switch_impl(),
        Some(&ns),
        &dir.path().join("ctl"),
        &[],
        &[
            "--vde-dir",
            vde_dir.to_str().expect("UTF-8 path"),
            "--bess",
            bess.to_str().expect("UTF-8 path"),
        ],
        &dir.path().join("switch.log"),
    );
    let (daemon_ip, vde_ip, bess_ip) = ("10.199.5.1", "10.199.5.2", "10.199.5.3");
    let mut daemon = Guest::builder("daemon", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:05:01")
        .addr(&format!("{daemon_ip}/24"))
        .script(&ping_all_script(&[vde_ip, bess_ip]))
        .boot(dir.path());
    let mut vde = Guest::builder_for_vde_dir("vde", &vde_dir)
        .netns(&ns)
        .mac("02:00:0a:09:05:02")
        .addr(&format!("{vde_ip}/24"))
        .script(&ping_all_script(&[daemon_ip, bess_ip]))
        .boot(dir.path());
    let mut vector = Guest::builder("bess", &switch)
        .bess(&bess)
        .netns(&ns)
        .mac("02:00:0a:09:05:03")
        .addr(&format!("{bess_ip}/24"))
        .script(&ping_all_script(&[daemon_ip, vde_ip]))
        .boot(dir.path());
    for guest in [&mut daemon, &mut vde, &mut vector] {
        let up = guest.wait_ready();
        println!(
            "{}: interface up after {:.1} s",
            guest.name(),
            up.as_secs_f64()
        );
    }
    expect_scripted_ping(&mut daemon, vde_ip);
    expect_scripted_ping(&mut daemon, bess_ip);
    expect_scripted_ping(&mut vde, daemon_ip);
    expect_scripted_ping(&mut vde, bess_ip);
    expect_scripted_ping(&mut vector, daemon_ip);
    expect_scripted_ping(&mut vector, vde_ip);
    for guest in [&mut daemon, &mut vde, &mut vector] {
        guest.halt();
    }
    drop(switch);
}

/// A child process this test started, stopped by its PID when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// vde2's `vde_plug2tap` joins a tap to the switch's vde directory: the
/// namespace, through that tap, and a daemon-transport guest ping each
/// other.
#[test]
fn vde_plug2tap_joins_a_tap_that_pings_a_guest() {
    require_uml_environment();
    require_vde_plug();
    let ns = NetNs::new("umlp2t");
    let dir = scratch();
    let vde_dir = dir.path().join("vde");
    let mut switch = SwitchProcess::start_with(
        &switch_impl(),
        Some(&ns),
        &dir.path().join("ctl"),
        &[],
        &["--vde-dir", vde_dir.to_str().expect("UTF-8 path")],
        &dir.path().join("switch.log"),
    );
    let plug = Child(
        ns.exec_command("vde_plug2tap")
            .args(["-s", vde_dir.to_str().expect("UTF-8 path"), "p2tap0"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start vde_plug2tap"),
    );
    if !ns.wait_for_link("p2tap0", Duration::from_secs(10)) {
        switch.fail("vde_plug2tap did not create tap p2tap0");
    }
    ns.ip_ok(&["addr", "add", "10.199.6.1/24", "dev", "p2tap0"]);
    ns.ip_ok(&["link", "set", "p2tap0", "up"]);
    let mut guest = Guest::builder("g", &switch)
        .netns(&ns)
        .mac("02:00:0a:09:06:02")
        .addr("10.199.6.2/24")
        .ping("10.199.6.1", 3)
        .boot(dir.path());
    guest.wait_ready();
    expect_guest_ping(&mut guest, "10.199.6.1");
    let out = ns.run(&["ping", "-c", "3", "-W", "2", "10.199.6.2"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match parse_ping(&text) {
        Some(stats) if out.status.success() && stats.received == stats.transmitted => {
            println!("tap p2tap0 (vde_plug2tap) -> 10.199.6.2: {stats}")
        }
        _ => guest.fail(format!("ping through vde_plug2tap's tap failed:\n{text}")),
    }
    guest.halt();
    drop(plug);
    switch.assert_running();
}
