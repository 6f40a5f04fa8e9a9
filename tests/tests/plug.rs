//! `uml-plug`, the cable tool (issue 5): cables between two uml-switch
//! instances (direct, stdio through pipes, `cmd://`), to vde2's
//! `vde_switch` (`vde://`, and vde2's own `vde_plug` at the far end of a
//! stdio cable), VXLAN to a Linux kernel vxlan interface and between two
//! "hosts" (network namespaces joined by a veth pair), link impairments
//! with a fixed seed, pcap capture, and exit codes.
//!
//! Tests with UML guests, taps or veths run everything inside namespaces
//! they create (UML's data socket is an abstract address, which belongs to
//! a namespace; the plug must run where its switches run), so no test
//! traffic leaves the machine.  The tests with socket clients only run in
//! the root namespace, like `tests/sockets.rs`.  They need root and
//! Debian's `user-mode-linux`, `iproute2`, `iputils-ping`, `busybox`,
//! `vde2` and `tcpdump` (`./run-tests.sh` installs them); without them they
//! fail rather than skip.  `-- --nocapture` shows the round-trip times.
//!
//! Cable swaps: several tests check two kinds of cable between the same
//! two guests without booting them twice.  Each guest pings its peer
//! through the first cable, then waits for a barrier file; the test replaces
//! the cable and opens the barrier, and the guest pings again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use uml_switch_tests::client::{mac, tagged_frame, Client, BROADCAST, TEST_ETHERTYPE};
use uml_switch_tests::daemon::SwitchProcess as Daemon;
use uml_switch_tests::netns::NetNs;
use uml_switch_tests::plug::{
    cmd_url, link_namespaces, open_barrier, parse_pcap, pcap_url, ping_after_barrier_script,
    require_tcpdump, uml_url, vde_url, vxlan_url, wait_for_log, Plug, EXIT_UNAVAILABLE,
};
use uml_switch_tests::uml::{
    expect_scripted_ping, parse_ping, require_uml_environment, Guest, SwitchImpl, SwitchProcess,
};
use uml_switch_tests::vde::require_programs;

/// The plug under test.
const PLUG: &str = env!("CARGO_BIN_EXE_uml-plug-under-test");

/// How long a plug may take to attach to a switch (its port shows in the
/// switch's log).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a plug may take to exit after a signal, an EOF or a failure.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a frame that must arrive may take (delay included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the switch logs when a port connects (`port N connected: ...`).
const CONNECTED: &str = " connected: ";

/// Name of the barrier file of the second cable (see the module doc).
const SECOND_CABLE: &str = "second-cable";

/// Our switch (UML_E2E_SWITCH is not consulted: a cable needs our `--sock`).
fn our_switch() -> SwitchImpl {
    SwitchImpl::UnderTest(env!("CARGO_BIN_EXE_uml-switch-under-test").into())
}

/// A fresh scratch directory for one test; short, because socket paths
/// must fit in 108 bytes.
fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("uml-plug-")
        .tempdir()
        .expect("create scratch directory")
}

/// `path` as UTF-8 (for command lines).
fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Starts our switch in `ns` with its control socket `dir/NAME.ctl` and log
/// `dir/NAME.log`.
fn start_switch(ns: &NetNs, dir: &Path, name: &str) -> SwitchProcess {
    SwitchProcess::start(
        &our_switch(),
        Some(ns),
        &dir.join(format!("{name}.ctl")),
        &[],
        &dir.join(format!("{name}.log")),
    )
}

/// Waits until the switch logging to `log` has had `count` port
/// connections; panics with `plug`'s log otherwise.
fn expect_attached(log: &Path, count: usize, plug: &Plug) {
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    if !wait_for_log(text, CONNECTED, count, ATTACH_TIMEOUT) {
        plug.fail(format!(
            "the switch logging to {} did not see {count} connection(s) within \
             {ATTACH_TIMEOUT:?}:\n{}",
            log.display(),
            text()
        ));
    }
}

/// Boots a guest on `switch` in `ns` that pings `peer` (3 requests, after
/// the harness's bounded wait for a first answer), then waits for the
/// [`SECOND_CABLE`] barrier and pings `peer` again (see the module doc).
fn boot_guest(
    name: &str,
    switch: &SwitchProcess,
    ns: &NetNs,
    dir: &Path,
    mac: &str,
    cidr: &str,
    peer: &str,
) -> Guest {
    Guest::builder(name, switch)
        .netns(ns)
        .mac(mac)
        .addr(cidr)
        .ping(peer, 3)
        .script(&ping_after_barrier_script(SECOND_CABLE, peer))
        .boot(dir)
}

/// Waits for `guest`'s first ping of `peer` (through the first cable),
/// prints it and fails unless every request was answered.
fn expect_first_ping(guest: &mut Guest, peer: &str, cable: &str) {
    let ping = guest.wait_ping();
    match ping.stats {
        Some(stats) => println!("{} -> {peer} over {cable}: {stats}", guest.name()),
        None => println!("{} -> {peer} over {cable}: no ping summary", guest.name()),
    }
    if !ping.all_replied() {
        guest.fail(format!(
            "guest {} could not ping {peer} over {cable} (exit code {}):\n{}",
            guest.name(),
            ping.exit_code,
            ping.output
        ));
    }
}

/// Opens the [`SECOND_CABLE`] barrier of both guests and checks their
/// second pings (through the second cable).
fn expect_second_pings(a: &mut Guest, a_peer: &str, b: &mut Guest, b_peer: &str, cable: &str) {
    open_barrier(a, SECOND_CABLE);
    open_barrier(b, SECOND_CABLE);
    println!("second cable: {cable}");
    expect_scripted_ping(a, a_peer);
    expect_scripted_ping(b, b_peer);
}

/// Runs `ping -c 3 -W 2 ADDR` in `ns`, prints the summary and panics
/// (with `what` and the output) unless every request was answered.
fn expect_ns_ping(ns: &NetNs, addr: &str, what: &str) {
    let out = ns.run(&["ping", "-c", "3", "-W", "2", addr]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match parse_ping(&text) {
        Some(stats) if out.status.success() && stats.received == stats.transmitted => {
            println!("{what}: {stats}");
        }
        _ => panic!("{what}: ping {addr} in {} failed:\n{text}", ns.name()),
    }
}

/// Two switches, a guest on each, joined by `uml-plug uml://A uml://B`;
/// then by a stdio cable of two one-endpoint plugs.
#[test]
fn guests_on_two_switches_ping_through_a_uml_to_uml_plug_then_a_stdio_cable() {
    require_uml_environment();
    let ns = NetNs::new("plugaa");
    let dir = scratch();
    let d = dir.path();
    let mut sw_a = start_switch(&ns, d, "a");
    let mut sw_b = start_switch(&ns, d, "b");
    let a_url = uml_url(sw_a.sock());
    let b_url = uml_url(sw_b.sock());

    let mut cable = Plug::spawn(Some(&ns), &[&a_url, &b_url], &d.join("plug.log"));
    expect_attached(sw_a.log(), 1, &cable);
    expect_attached(sw_b.log(), 1, &cable);

    let (ip_a, ip_b) = ("10.199.30.1", "10.199.30.2");
    let mut a = boot_guest(
        "a",
        &sw_a,
        &ns,
        d,
        "02:00:0a:1e:00:01",
        "10.199.30.1/24",
        ip_b,
    );
    let mut b = boot_guest(
        "b",
        &sw_b,
        &ns,
        d,
        "02:00:0a:1e:00:02",
        "10.199.30.2/24",
        ip_a,
    );
    a.wait_ready();
    b.wait_ready();
    expect_first_ping(&mut a, ip_b, "uml-plug uml://A uml://B");
    expect_first_ping(&mut b, ip_a, "uml-plug uml://A uml://B");
    cable.assert_running();

    // Unplug (SIGTERM: the plug leaves both switches) and lay a stdio cable:
    // `uml-plug uml://A` and `uml-plug uml://B`, stdin of each the stdout of
    // the other, as dpipe or ssh would connect them.
    cable.terminate(EXIT_TIMEOUT);
    let (mut half_a, mut half_b) = Plug::spawn_cable(
        Some(&ns),
        &[&a_url],
        &d.join("half-a.log"),
        &[&b_url],
        &d.join("half-b.log"),
    );
    expect_attached(sw_a.log(), 2, &half_a);
    expect_attached(sw_b.log(), 2, &half_b);
    expect_second_pings(&mut a, ip_b, &mut b, ip_a, "stdio cable (two pipes)");
    half_a.assert_running();
    half_b.assert_running();

    a.halt();
    b.halt();
    sw_a.assert_running();
    sw_b.assert_running();
}

/// Two switches joined by `uml-plug uml://A cmd://"uml-plug uml://B"`: the
/// far end of the stdio cable is a command the plug runs.
#[test]
fn guests_on_two_switches_ping_through_a_cmd_cable() {
    require_uml_environment();
    let ns = NetNs::new("plugcmd");
    let dir = scratch();
    let d = dir.path();
    let mut sw_a = start_switch(&ns, d, "a");
    let mut sw_b = start_switch(&ns, d, "b");
    let far = cmd_url(&[PLUG, &uml_url(sw_b.sock())]);
    let mut cable = Plug::spawn(
        Some(&ns),
        &[&uml_url(sw_a.sock()), &far],
        &d.join("plug.log"),
    );
    expect_attached(sw_a.log(), 1, &cable);
    expect_attached(sw_b.log(), 1, &cable);

    let (ip_a, ip_b) = ("10.199.31.1", "10.199.31.2");
    let mut a = Guest::builder("a", &sw_a)
        .netns(&ns)
        .mac("02:00:0a:1f:00:01")
        .addr("10.199.31.1/24")
        .ping(ip_b, 3)
        .boot(d);
    let mut b = Guest::builder("b", &sw_b)
        .netns(&ns)
        .mac("02:00:0a:1f:00:02")
        .addr("10.199.31.2/24")
        .ping(ip_a, 3)
        .boot(d);
    a.wait_ready();
    b.wait_ready();
    expect_first_ping(&mut a, ip_b, "a cmd:// cable");
    expect_first_ping(&mut b, ip_a, "a cmd:// cable");
    cable.assert_running();
    a.halt();
    b.halt();
    sw_a.assert_running();
    sw_b.assert_running();
}

/// uml-switch cabled to vde2's own `vde_switch -s DIR`, a guest on each
/// (the vde side's on the daemon transport, `DIR/ctl`: vde_switch speaks
/// it too): first `uml-plug uml://A vde://DIR`, then a stdio cable whose far
/// end is vde2's `vde_plug DIR` (`uml-plug uml://A cmd://"vde_plug DIR"`).
#[test]
fn guest_on_uml_switch_pings_guest_on_vde2_switch_through_vde_and_vde_plug_cables() {
    require_uml_environment();
    require_programs(&["vde_switch", "vde_plug"]);
    let ns = NetNs::new("plugvde");
    let dir = scratch();
    let d = dir.path();
    let mut ours = start_switch(&ns, d, "ours");
    let vde_dir = d.join("vde");
    let mut theirs =
        SwitchProcess::start_vde(&SwitchImpl::Vde2, Some(&ns), &vde_dir, &d.join("vde.log"));
    let a_url = uml_url(ours.sock());

    let mut cable = Plug::spawn(
        Some(&ns),
        &[&a_url, &vde_url(&vde_dir)],
        &d.join("plug.log"),
    );
    expect_attached(ours.log(), 1, &cable);

    let (ip_a, ip_b) = ("10.199.32.1", "10.199.32.2");
    let mut a = boot_guest(
        "a",
        &ours,
        &ns,
        d,
        "02:00:0a:20:00:01",
        "10.199.32.1/24",
        ip_b,
    );
    let mut b = boot_guest(
        "b",
        &theirs,
        &ns,
        d,
        "02:00:0a:20:00:02",
        "10.199.32.2/24",
        ip_a,
    );
    a.wait_ready();
    b.wait_ready();
    expect_first_ping(&mut a, ip_b, "uml-plug uml://A vde://DIR");
    expect_first_ping(&mut b, ip_a, "uml-plug uml://A vde://DIR");
    cable.assert_running();

    cable.terminate(EXIT_TIMEOUT);
    let far = cmd_url(&["vde_plug", s(&vde_dir)]);
    let mut cable = Plug::spawn(Some(&ns), &[&a_url, &far], &d.join("plug2.log"));
    expect_attached(ours.log(), 2, &cable);
    expect_second_pings(
        &mut a,
        ip_b,
        &mut b,
        ip_a,
        "uml-plug uml://A cmd://\"vde_plug DIR\"",
    );
    cable.assert_running();

    a.halt();
    b.halt();
    ours.assert_running();
    theirs.assert_running();
}

/// Host addresses of the veth link between the two "hosts".
const HOST1_ADDR: &str = "10.198.0.1";
const HOST2_ADDR: &str = "10.198.0.2";

/// Two namespaces, "host1" and "host2", joined by a veth pair with
/// [`HOST1_ADDR`] and [`HOST2_ADDR`].
fn two_hosts(prefix: &str) -> (NetNs, NetNs) {
    let host1 = NetNs::new(&format!("{prefix}1"));
    let host2 = NetNs::new(&format!("{prefix}2"));
    link_namespaces(
        &host1,
        "veth1",
        &format!("{HOST1_ADDR}/24"),
        &host2,
        "veth2",
        &format!("{HOST2_ADDR}/24"),
    );
    (host1, host2)
}

/// host1 runs uml-switch, a guest and `uml-plug uml://CTL
/// vxlan://HOST2?vni=42&local=HOST1`; host2 has a kernel vxlan interface
/// `vx0` (id 42, remote HOST1, dstport 4789) with an address in the guest's
/// subnet.  The guest pings vx0's address and host2 pings the guest: RFC
/// 7348 interoperability with Linux.
#[test]
fn guest_behind_a_vxlan_plug_and_a_kernel_vxlan_interface_ping_each_other() {
    require_uml_environment();
    let (host1, host2) = two_hosts("plugvxk");
    let dir = scratch();
    let d = dir.path();

    host2.ip_ok(&[
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "42",
        "remote",
        HOST1_ADDR,
        "local",
        HOST2_ADDR,
        "dstport",
        "4789",
        "nolearning",
    ]);
    host2.ip_ok(&["addr", "add", "10.199.33.2/24", "dev", "vx0"]);
    host2.ip_ok(&["link", "set", "vx0", "up"]);

    let mut switch = start_switch(&host1, d, "sw");
    let mut cable = Plug::spawn(
        Some(&host1),
        &[
            &uml_url(switch.sock()),
            &vxlan_url(HOST2_ADDR, 42, HOST1_ADDR),
        ],
        &d.join("plug.log"),
    );
    expect_attached(switch.log(), 1, &cable);

    let mut guest = Guest::builder("g", &switch)
        .netns(&host1)
        .mac("02:00:0a:21:00:01")
        .addr("10.199.33.1/24")
        .ping("10.199.33.2", 3)
        .boot(d);
    guest.wait_ready();
    expect_first_ping(&mut guest, "10.199.33.2", "vxlan:// to the kernel's vx0");
    expect_ns_ping(&host2, "10.199.33.1", "host2 vx0 -> guest over VXLAN");
    cable.assert_running();
    guest.halt();
    switch.assert_running();
}

/// The issue's "Done when": two hosts (namespaces joined by a veth pair),
/// each running uml-switch and a UML guest, joined first by VXLAN (a plug
/// on each side, each pointing at the other), then by an ssh-style stdio
/// cable (`uml-plug uml://CTL1 cmd://"ip netns exec HOST2 uml-plug
/// uml://CTL2"`).  The guests ping each other over both; the round trips
/// are printed.
#[test]
fn guests_on_two_hosts_ping_over_vxlan_then_over_an_ssh_style_cable() {
    require_uml_environment();
    let (host1, host2) = two_hosts("plugtwo");
    let dir = scratch();
    let d = dir.path();
    let mut sw1 = start_switch(&host1, d, "sw1");
    let mut sw2 = start_switch(&host2, d, "sw2");

    let mut vx1 = Plug::spawn(
        Some(&host1),
        &[&uml_url(sw1.sock()), &vxlan_url(HOST2_ADDR, 42, HOST1_ADDR)],
        &d.join("vx1.log"),
    );
    let mut vx2 = Plug::spawn(
        Some(&host2),
        &[&uml_url(sw2.sock()), &vxlan_url(HOST1_ADDR, 42, HOST2_ADDR)],
        &d.join("vx2.log"),
    );
    expect_attached(sw1.log(), 1, &vx1);
    expect_attached(sw2.log(), 1, &vx2);

    let (ip_a, ip_b) = ("10.199.34.1", "10.199.34.2");
    let mut a = boot_guest(
        "a",
        &sw1,
        &host1,
        d,
        "02:00:0a:22:00:01",
        "10.199.34.1/24",
        ip_b,
    );
    let mut b = boot_guest(
        "b",
        &sw2,
        &host2,
        d,
        "02:00:0a:22:00:02",
        "10.199.34.2/24",
        ip_a,
    );
    a.wait_ready();
    b.wait_ready();
    expect_first_ping(&mut a, ip_b, "VXLAN between the hosts");
    expect_first_ping(&mut b, ip_a, "VXLAN between the hosts");
    vx1.assert_running();
    vx2.assert_running();

    vx1.terminate(EXIT_TIMEOUT);
    vx2.terminate(EXIT_TIMEOUT);
    let far = cmd_url(&[
        "ip",
        "netns",
        "exec",
        host2.name(),
        PLUG,
        &uml_url(sw2.sock()),
    ]);
    let mut ssh_like = Plug::spawn(
        Some(&host1),
        &[&uml_url(sw1.sock()), &far],
        &d.join("ssh.log"),
    );
    expect_attached(sw1.log(), 2, &ssh_like);
    expect_attached(sw2.log(), 2, &ssh_like);
    expect_second_pings(
        &mut a,
        ip_b,
        &mut b,
        ip_a,
        "an ssh-style stdio cable between the hosts",
    );
    ssh_like.assert_running();

    a.halt();
    b.halt();
    sw1.assert_running();
    sw2.assert_running();
}

// ---------------------------------------------------------------------------
// Socket-level tests: two switches of ours in the root namespace, joined by
// a plug, with daemon-protocol test clients (tests/src/client.rs).
// ---------------------------------------------------------------------------

/// Two switches joined by `uml-plug OPTIONS... uml://A uml://B`, and a
/// client on each once the plug is attached to both.
struct Bench {
    a: Daemon,
    b: Daemon,
    plug: Plug,
    client_a: Client,
    client_b: Client,
}

impl Bench {
    fn start(options: &[&str]) -> Bench {
        let a = Daemon::start(&[]);
        let b = Daemon::start(&[]);
        let mut args: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        args.push(uml_url(a.ctl_path()));
        args.push(uml_url(b.ctl_path()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let plug = Plug::spawn(None, &args, &a.dir().join("plug.log"));
        for switch in [&a, &b] {
            if !wait_for_log(|| switch.stderr_log(), CONNECTED, 1, ATTACH_TIMEOUT) {
                plug.fail(format!("the plug did not attach:\n{}", switch.logs()));
            }
        }
        let client_a = Client::connect_abstract(a.ctl_path()).expect("attach client a");
        let client_b = Client::connect_abstract(b.ctl_path()).expect("attach client b");
        Bench {
            a,
            b,
            plug,
            client_a,
            client_b,
        }
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!(
            "{msg}\n--- switch A ---\n{}\n--- switch B ---\n{}\n{}",
            self.a.logs(),
            self.b.logs(),
            self.plug.diagnostics()
        );
    }
}

/// The tag of a test frame (the first 4 payload bytes, see `tagged_frame`),
/// if `frame` is one sent by `src`.
fn tag_from(frame: &[u8], src: [u8; 6]) -> Option<u32> {
    (frame.len() >= 18 && frame[6..12] == src && frame[12..14] == TEST_ETHERTYPE.to_be_bytes())
        .then(|| u32::from_be_bytes(frame[14..18].try_into().expect("4 bytes")))
}

/// `--loss 10 --seed 7`: of 10,000 frames, about 9,000 arrive.
#[test]
fn loss_10_percent_with_a_fixed_seed_drops_about_one_frame_in_ten() {
    const FRAMES: u32 = 10_000;
    const BURST: u32 = 50;
    let bench = Bench::start(&["--loss", "10", "--seed", "7"]);
    let received = AtomicUsize::new(0);
    let duplicates = AtomicUsize::new(0);
    let sending = AtomicBool::new(true);
    thread::scope(|scope| {
        // The receiver drains concurrently and stops after 2 s of silence
        // once everything has been sent (bounded at 60 s in all).
        scope.spawn(|| {
            let mut seen = vec![false; FRAMES as usize];
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut quiet_since = Instant::now();
            while Instant::now() < deadline {
                match bench.client_b.recv_frame(Duration::from_millis(100)) {
                    Some(frame) => {
                        quiet_since = Instant::now();
                        if let Some(tag) = tag_from(&frame, mac(1)).filter(|t| *t < FRAMES) {
                            if std::mem::replace(&mut seen[tag as usize], true) {
                                duplicates.fetch_add(1, Ordering::Relaxed);
                            } else {
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    None => {
                        if !sending.load(Ordering::Relaxed)
                            && quiet_since.elapsed() > Duration::from_secs(2)
                        {
                            break;
                        }
                    }
                }
            }
        });
        // Paced: bursts of 50 with 10 ms pauses (5,000 frames/s), far below
        // what the switches and the plug forward, so that only the
        // impairment drops frames.
        for burst in 0..FRAMES / BURST {
            for i in 0..BURST {
                let tag = burst * BURST + i;
                bench
                    .client_a
                    .send_frame(&tagged_frame(BROADCAST, mac(1), tag))
                    .unwrap_or_else(|e| bench.fail(format!("send frame {tag}: {e}")));
            }
            thread::sleep(Duration::from_millis(10));
        }
        sending.store(false, Ordering::Relaxed);
    });
    let received = received.into_inner();
    println!("--loss 10 --seed 7: {received} of {FRAMES} frames arrived");
    if duplicates.into_inner() != 0 {
        bench.fail("frames arrived twice without --dup");
    }
    // Each frame is lost independently with p = 0.1: the count received is
    // binomial, mean 9,000, standard deviation sqrt(10000 * 0.1 * 0.9) = 30.
    // ±300 is 10 sd: a correct plug fails it essentially never, whatever
    // the seed, while a plug that ignores --loss (10,000) or applies it
    // twice (8,100) fails it.
    if !(8_700..=9_300).contains(&received) {
        bench.fail(format!(
            "--loss 10: {received} of {FRAMES} frames arrived, expected 9000 ± 300"
        ));
    }
}

/// `--delay 50`: a ping-pong round trip crosses the plug twice, so it takes
/// at least 100 ms.  A functional check of the setting, not a performance
/// measurement: the upper bound is generous.
#[test]
fn delay_50_ms_applies_to_both_directions() {
    const ROUNDS: u32 = 20;
    let bench = Bench::start(&["--delay", "50"]);
    let stop = AtomicBool::new(false);
    let rtts = thread::scope(|scope| {
        // B echoes every test frame from a back to a, tag unchanged.
        // Bounded, so that a failing main thread (whose scope waits for
        // this one) cannot hang the test.
        scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(tag) = bench
                    .client_b
                    .recv_frame(Duration::from_millis(50))
                    .and_then(|f| tag_from(&f, mac(1)))
                {
                    let _ = bench
                        .client_b
                        .send_frame(&tagged_frame(mac(1), mac(2), tag));
                }
            }
        });
        let mut rtts = Vec::new();
        for round in 0..ROUNDS {
            let started = Instant::now();
            bench
                .client_a
                .send_frame(&tagged_frame(BROADCAST, mac(1), round))
                .unwrap_or_else(|e| bench.fail(format!("send: {e}")));
            let deadline = started + DELIVERY_TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    stop.store(true, Ordering::Relaxed);
                    bench.fail(format!(
                        "no echo of round {round} within {DELIVERY_TIMEOUT:?}"
                    ));
                }
                let echo = bench.client_a.recv_frame(left);
                if echo.and_then(|f| tag_from(&f, mac(2))) == Some(round) {
                    rtts.push(started.elapsed());
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        rtts
    });
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    println!(
        "--delay 50: round trips min/median/max = {:.1}/{:.1}/{:.1} ms",
        sorted[0].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        sorted[sorted.len() - 1].as_secs_f64() * 1e3
    );
    if median < Duration::from_millis(100) {
        bench.fail(format!(
            "--delay 50: median round trip {median:?} < 100 ms (the delay applies both ways); \
             all: {rtts:?}"
        ));
    }
    // Generous: the delay itself is 100 ms; the rest is scheduling slack on a
    // loaded 2-core machine.
    if median >= Duration::from_millis(100 + 400) {
        bench.fail(format!(
            "--delay 50: median round trip {median:?} >= 500 ms; all: {rtts:?}"
        ));
    }
}

/// `uml-plug uml://A pcap://FILE` records what the switch floods to its
/// port; tcpdump reads the file.
#[test]
fn pcap_endpoint_records_what_the_switch_floods_and_tcpdump_reads_it() {
    require_tcpdump();
    const FRAMES: u32 = 5;
    const TAG_BASE: u32 = 0xc0ff_ee00;
    let switch = Daemon::start(&[]);
    let file = switch.dir().join("capture.pcap");
    let mut plug = Plug::spawn(
        None,
        &[&uml_url(switch.ctl_path()), &pcap_url(&file)],
        &switch.dir().join("plug.log"),
    );
    if !wait_for_log(|| switch.stderr_log(), CONNECTED, 1, ATTACH_TIMEOUT) {
        plug.fail(format!("the plug did not attach:\n{}", switch.logs()));
    }
    let client = Client::connect_abstract(switch.ctl_path()).expect("attach the client");
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| tagged_frame(BROADCAST, mac(1), TAG_BASE + i))
        .collect();
    for frame in &frames {
        client.send_frame(frame).expect("send a frame");
    }
    // Give the frames time to reach the file (a writer may buffer until it
    // exits: then the file just stays short until the SIGTERM below).
    let complete = 24 + frames.iter().map(|f| 16 + f.len() as u64).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < complete
    {
        thread::sleep(Duration::from_millis(20));
    }
    plug.assert_running();
    if plug.terminate(EXIT_TIMEOUT).is_none() {
        plug.fail(format!(
            "the plug did not exit within {EXIT_TIMEOUT:?} of SIGTERM"
        ));
    }

    let bytes =
        std::fs::read(&file).unwrap_or_else(|e| plug.fail(format!("read {}: {e}", file.display())));
    let pcap = parse_pcap(&bytes).unwrap_or_else(|e| plug.fail(format!("bad capture: {e}")));
    if pcap.linktype != 1 {
        plug.fail(format!(
            "link type {}, expected 1 (Ethernet)",
            pcap.linktype
        ));
    }
    let ours: Vec<&Vec<u8>> = pcap
        .records
        .iter()
        .map(|r| &r.data)
        .filter(|d| tag_from(d, mac(1)).is_some())
        .collect();
    if ours.len() != frames.len() || ours.iter().zip(&frames).any(|(got, sent)| *got != sent) {
        plug.fail(format!(
            "the capture holds {} of our frames ({} records in all), expected exactly the {} \
             sent, in order",
            ours.len(),
            pcap.records.len(),
            frames.len()
        ));
    }

    let out = std::process::Command::new("tcpdump")
        .args(["-r", s(&file), "-nn", "-e"])
        .output()
        .expect("run tcpdump");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("tcpdump -r {} -nn -e:\n{text}", file.display());
    let lines = text
        .lines()
        .filter(|l| l.contains("02:00:5e:10:00:01 > ff:ff:ff:ff:ff:ff"))
        .count();
    assert!(
        out.status.success() && lines == frames.len(),
        "tcpdump ({}) shows {lines} of our frames, expected {}:\n{text}{}",
        out.status,
        frames.len(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plug whose switch socket is missing exits 69 at once, naming it.
#[test]
fn missing_switch_socket_exits_69_naming_the_endpoint() {
    let live = Daemon::start(&[]);
    let missing = live.dir().join("nobody-here.ctl");
    let url = uml_url(&missing);
    let mut plug = Plug::spawn(
        None,
        &[&uml_url(live.ctl_path()), &url],
        &live.dir().join("plug.log"),
    );
    let Some(status) = plug.wait_exit(EXIT_TIMEOUT) else {
        plug.fail(format!("the plug did not exit within {EXIT_TIMEOUT:?}"));
    };
    if status.code() != Some(EXIT_UNAVAILABLE) {
        plug.fail(format!("exit status {status}, expected {EXIT_UNAVAILABLE}"));
    }
    let log = plug.log_text();
    if !log.contains(url.as_str()) && !log.contains(s(&missing)) {
        plug.fail(format!("the message does not name {url}"));
    }
}

/// A plug exits non-zero, naming the endpoint, when a switch goes away; and
/// with one endpoint it exits 0 at EOF on stdin.
#[test]
fn plug_exits_when_a_switch_goes_away_and_at_eof_on_stdin() {
    let a = Daemon::start(&[]);
    let mut b = Daemon::start(&[]);
    let b_url = uml_url(b.ctl_path());
    let mut plug = Plug::spawn(
        None,
        &[&uml_url(a.ctl_path()), &b_url],
        &a.dir().join("plug.log"),
    );
    for switch in [&a, &b] {
        if !wait_for_log(|| switch.stderr_log(), CONNECTED, 1, ATTACH_TIMEOUT) {
            plug.fail(format!("the plug did not attach:\n{}", switch.logs()));
        }
    }
    b.terminate(EXIT_TIMEOUT)
        .expect("switch B exits on SIGTERM");
    let Some(status) = plug.wait_exit(EXIT_TIMEOUT) else {
        plug.fail(format!(
            "the plug still runs {EXIT_TIMEOUT:?} after switch B went away"
        ));
    };
    if status.success() {
        plug.fail(format!(
            "exit status {status} after switch B went away, expected non-zero"
        ));
    }
    let log = plug.log_text();
    if !log.contains(b_url.as_str()) && !log.contains(s(b.ctl_path())) {
        plug.fail(format!("the message does not name {b_url}"));
    }

    // One endpoint: the other is stdin/stdout; EOF on stdin ends it, exit 0.
    let mut stdio = Plug::spawn_piped(None, &[&uml_url(a.ctl_path())], &a.dir().join("stdio.log"));
    if !wait_for_log(|| a.stderr_log(), CONNECTED, 2, ATTACH_TIMEOUT) {
        stdio.fail(format!("the plug did not attach:\n{}", a.logs()));
    }
    drop(stdio.take_stdin());
    match stdio.wait_exit(EXIT_TIMEOUT) {
        Some(status) if status.success() => {}
        Some(status) => stdio.fail(format!("exit status {status} at EOF on stdin, expected 0")),
        None => stdio.fail(format!(
            "the plug still runs {EXIT_TIMEOUT:?} after EOF on stdin"
        )),
    }
}

/// `--loss 100:0` loses everything from the first endpoint to the second
/// and nothing the other way.
#[test]
fn options_can_differ_per_direction() {
    let bench = Bench::start(&["--loss", "100:0", "--seed", "3"]);
    for tag in 0..20 {
        bench
            .client_a
            .send_frame(&tagged_frame(BROADCAST, mac(1), tag))
            .unwrap_or_else(|e| bench.fail(format!("send: {e}")));
        bench
            .client_b
            .send_frame(&tagged_frame(BROADCAST, mac(2), tag))
            .unwrap_or_else(|e| bench.fail(format!("send: {e}")));
    }
    let mut a_got = 0;
    while let Some(frame) = bench.client_a.recv_frame(Duration::from_millis(500)) {
        if tag_from(&frame, mac(2)).is_some() {
            a_got += 1;
        }
    }
    let mut b_got = 0;
    while let Some(frame) = bench.client_b.recv_frame(Duration::from_millis(500)) {
        if tag_from(&frame, mac(1)).is_some() {
            b_got += 1;
        }
    }
    if (a_got, b_got) != (20, 0) {
        bench.fail(format!(
            "--loss 100:0: A got {a_got} of B's 20 frames (want 20), B got {b_got} of A's (want 0)"
        ));
    }
}

/// A VXLAN cable to two peers (two UDP sockets on loopback acting as
/// VTEPs): broadcasts are replicated to both; once a MAC is seen behind
/// one peer, unicast to it goes to that peer only.
#[test]
fn vxlan_to_two_peers_replicates_floods_and_learns_unicast() {
    use std::net::UdpSocket;
    let switch = Daemon::start(&[]);
    let peer1 = UdpSocket::bind("127.0.0.2:0").expect("bind peer 1");
    let peer2 = UdpSocket::bind("127.0.0.3:0").expect("bind peer 2");
    let local = UdpSocket::bind("127.0.0.1:0").expect("find a free port");
    let local_addr = local.local_addr().unwrap();
    drop(local);
    let url = format!(
        "vxlan://{},{}?vni=77&local={local_addr}",
        peer1.local_addr().unwrap(),
        peer2.local_addr().unwrap()
    );
    let ctl = uml_url(switch.ctl_path());
    let plug = Plug::spawn(None, &[&ctl, &url], &switch.dir().join("plug.log"));
    if !wait_for_log(|| switch.stderr_log(), CONNECTED, 1, ATTACH_TIMEOUT) {
        plug.fail(format!("the plug did not attach:\n{}", switch.logs()));
    }
    let client = Client::connect_abstract(switch.ctl_path()).expect("attach a client");
    let recv_vxlan = |peer: &UdpSocket| -> Option<Vec<u8>> {
        peer.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = peer.recv_from(&mut buf).ok()?;
        assert_eq!(buf[0], 0x08, "VXLAN flags");
        assert_eq!(&buf[4..7], &[0, 0, 77], "VNI 77");
        Some(buf[8..n].to_vec())
    };
    // A broadcast reaches both peers.
    let hello = tagged_frame(BROADCAST, mac(1), 1);
    client.send_frame(&hello).expect("send");
    assert_eq!(
        recv_vxlan(&peer1),
        Some(hello.clone()),
        "{}",
        plug.diagnostics()
    );
    assert_eq!(recv_vxlan(&peer2), Some(hello), "{}", plug.diagnostics());
    // Peer 2 speaks from MAC 2: the plug learns it is behind peer 2.
    let mut datagram = vec![0x08, 0, 0, 0, 0, 0, 77, 0];
    datagram.extend(tagged_frame(mac(1), mac(2), 2));
    peer2
        .send_to(&datagram, local_addr)
        .expect("send to the plug");
    assert_eq!(
        client
            .recv_frame(Duration::from_secs(5))
            .and_then(|f| tag_from(&f, mac(2))),
        Some(2),
        "{}",
        plug.diagnostics()
    );
    // Unicast to MAC 2 goes to peer 2 only.
    let to_2 = tagged_frame(mac(2), mac(1), 3);
    client.send_frame(&to_2).expect("send");
    assert_eq!(recv_vxlan(&peer2), Some(to_2), "{}", plug.diagnostics());
    assert_eq!(recv_vxlan(&peer1), None, "unicast was replicated to peer 1");
}
