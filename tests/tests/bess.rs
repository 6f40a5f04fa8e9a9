//! Integration tests of the `--bess PATH` listener (UML's vector transport
//! `bess`: a SOCK_SEQPACKET unix socket, one bare Ethernet frame per
//! message, one port per connection) over real sockets.
//!
//! Every test starts its own switch with `--sock DIR/ctl --bess
//! OTHERDIR/bess.sock` and attaches [`BessClient`]s and, where useful,
//! daemon-protocol [`Client`]s. All waits are bounded; nothing asserts on
//! speed. "Nothing arrives" is checked by waiting [`SILENCE`] for a frame.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use tempfile::TempDir;
use uml_switch_tests::bess::{BessClient, BessRecv};
use uml_switch_tests::client::{
    eth_frame, mac, tagged_frame, Client, DataSocketKind, BROADCAST, TEST_ETHERTYPE,
};
use uml_switch_tests::daemon::{SwitchProcess, EXIT_ALREADY_RUNNING, READY_TIMEOUT};

/// How long a frame that must arrive may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long we listen to conclude that a frame is *not* delivered.
const SILENCE: Duration = Duration::from_millis(300);

/// How long the switch may take to exit after a signal or a startup error.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra file descriptors tolerated after many connect/close cycles.
const FD_SLACK: usize = 4;

/// Largest message the switch accepts (MTU 9216 + 18).
const MAX_FRAME: usize = 9234;

/// What the switch logs once it has made a bess connection a port.
const ATTACHED: &str = "connected: bess client";

const A: u8 = 0xa;
const B: u8 = 0xb;
const C: u8 = 0xc;
const D: u8 = 0xd;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A port of the switch as the test sees it: a bess or a daemon client.
trait Port {
    fn send(&self, frame: &[u8]);
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>>;
}

impl Port for BessClient {
    fn send(&self, frame: &[u8]) {
        self.send_frame(frame).expect("send on a bess connection");
    }

    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_frame(timeout)
    }
}

impl Port for Client {
    fn send(&self, frame: &[u8]) {
        self.send_frame(frame)
            .expect("send on a daemon data socket");
    }

    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_frame(timeout)
    }
}

/// A running switch with a bess listener, with its logs in every failure
/// message.
struct Bench {
    switch: SwitchProcess,
    bess: PathBuf,
    /// Holds the bess socket; dropped after the switch (field order).
    _dir: TempDir,
}

impl Bench {
    fn start() -> Bench {
        Bench::start_with(&[])
    }

    /// `--sock <temp>/ctl --bess <other temp>/bess.sock ARGS`.
    fn start_with(args: &[&str]) -> Bench {
        let dir = bess_dir();
        let bess = dir.path().join("bess.sock");
        let mut argv = vec!["--bess", bess.to_str().expect("UTF-8 temp path")];
        argv.extend_from_slice(args);
        let switch = SwitchProcess::start(&argv);
        let bench = Bench {
            switch,
            bess,
            _dir: dir,
        };
        bench.wait_bess_ready();
        bench
    }

    /// The control socket accepts before the bess socket might: wait
    /// (bounded) until the bess path accepts too, and until the switch has
    /// logged the probe connection as a port (so that [`Bench::attach_bess`]
    /// cannot mistake the probe's line for that of a later client).
    fn wait_bess_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match BessClient::connect(&self.bess) {
                Ok(_probe) => {
                    self.wait_log(ATTACHED, 1);
                    return;
                }
                Err(err) if Instant::now() >= deadline => panic!(
                    "bess socket {} does not accept: {err}\n{}",
                    self.bess.display(),
                    self.logs()
                ),
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn bess(&self) -> &Path {
        &self.bess
    }

    /// Connects a bess client and waits (bounded) until the switch has
    /// made it a port.  `connect()` returns once the connection is queued
    /// for `accept()`, and there is no handshake: frames flooded before the
    /// switch attaches the connection do not reach it, so tests that expect
    /// deliveries must wait for the switch's `connected: bess client` line.
    fn attach_bess(&self) -> BessClient {
        let attached = self.log_count(ATTACHED);
        let client = BessClient::connect(&self.bess).unwrap_or_else(|err| {
            panic!(
                "bess client failed to connect to {}: {err}\n{}",
                self.bess.display(),
                self.logs()
            )
        });
        self.wait_log(ATTACHED, attached + 1);
        client
    }

    fn attach_daemon(&self) -> Client {
        Client::connect(self.switch.ctl_path(), DataSocketKind::Abstract)
            .unwrap_or_else(|err| panic!("daemon client failed to attach: {err}\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        self.switch.logs()
    }

    /// `port` must receive exactly `expected` next.
    fn expect_frame(&self, port: &dyn Port, expected: &[u8], who: &str) {
        match port.recv(DELIVERY_TIMEOUT) {
            Some(frame) if frame == expected => {}
            Some(frame) => panic!(
                "{who} received an unexpected frame ({} bytes, head {:02x?}) instead of the \
                 expected one ({} bytes, head {:02x?})\n{}",
                frame.len(),
                &frame[..frame.len().min(20)],
                expected.len(),
                &expected[..expected.len().min(20)],
                self.logs()
            ),
            None => panic!(
                "{who} received nothing within {DELIVERY_TIMEOUT:?}\n{}",
                self.logs()
            ),
        }
    }

    /// Receives frames until `expected` arrives; returns those before it.
    fn frames_before(&self, port: &dyn Port, expected: &[u8], who: &str) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match port.recv(left) {
                Some(frame) if frame == expected => return before,
                Some(frame) => before.push(frame),
                None => panic!(
                    "{who} did not receive the expected frame within {DELIVERY_TIMEOUT:?} \
                     ({} other frames)\n{}",
                    before.len(),
                    self.logs()
                ),
            }
        }
    }

    /// `port` must receive nothing for [`SILENCE`].
    fn expect_silence(&self, port: &dyn Port, who: &str) {
        if let Some(frame) = port.recv(SILENCE) {
            panic!(
                "{who} received a frame it must not get ({} bytes, head {:02x?})\n{}",
                frame.len(),
                &frame[..frame.len().min(20)],
                self.logs()
            );
        }
    }

    /// How many times the switch's logs contain `text` so far.
    fn log_count(&self, text: &str) -> usize {
        self.logs().matches(text).count()
    }

    /// Waits (bounded) until the switch's logs contain `text` at least
    /// `times` times.
    fn wait_log(&self, text: &str, times: usize) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while self.log_count(text) < times {
            assert!(
                Instant::now() < deadline,
                "the switch did not log {text:?} {times} time(s)\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The switch process must still be running.
    fn assert_alive(&mut self) {
        if let Some(status) = self.switch.wait_exit(Duration::ZERO) {
            panic!("switch exited: {status}\n{}", self.logs());
        }
    }
}

/// A fresh directory for a bess socket (short: sun_path holds 108 bytes).
fn bess_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("uml-bess.")
        .tempdir()
        .expect("create temp dir for the bess socket")
}

/// Sends a broadcast from `a` (source MAC `mac(a_mac)`) that must reach `b`,
/// and one back; frames queued earlier are skipped.
fn assert_forwards_both_ways(
    bench: &Bench,
    a: &dyn Port,
    a_mac: u8,
    b: &dyn Port,
    b_mac: u8,
    tag: u32,
) {
    let there = tagged_frame(BROADCAST, mac(a_mac), tag);
    a.send(&there);
    bench.frames_before(b, &there, "second port");
    let back = tagged_frame(BROADCAST, mac(b_mac), tag + 1);
    b.send(&back);
    bench.frames_before(a, &back, "first port");
}

/// Polls the switch's fd count until it is at most `limit` (bounded), and
/// returns the last count seen.
fn settled_fd_count(switch: &SwitchProcess, limit: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = switch.open_fd_count().expect("read /proc/PID/fd");
        if count <= limit || Instant::now() >= deadline {
            return count;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

// ---------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------

#[test]
fn bess_and_daemon_clients_exchange_broadcast_and_learned_unicast() {
    let bench = Bench::start();
    let a = bench.attach_bess();
    let b = bench.attach_daemon();
    let c = bench.attach_bess();

    // Broadcasts both ways; also teaches the switch where A and B are.
    let from_a = tagged_frame(BROADCAST, mac(A), 1);
    a.send_frame(&from_a).expect("send");
    bench.expect_frame(&b, &from_a, "B (daemon)");
    bench.expect_frame(&c, &from_a, "C (bess)");
    bench.expect_silence(&a, "A (the sender)");
    let from_b = tagged_frame(BROADCAST, mac(B), 2);
    b.send_frame(&from_b).expect("send");
    bench.expect_frame(&a, &from_b, "A (bess)");
    bench.expect_frame(&c, &from_b, "C (bess)");

    // Learned unicast reaches exactly its port, in both directions, byte
    // for byte (no header, no padding).
    let to_a = tagged_frame(mac(A), mac(B), 3);
    b.send_frame(&to_a).expect("send");
    bench.expect_frame(&a, &to_a, "A (bess)");
    bench.expect_silence(&c, "C (bess)");
    let to_b = tagged_frame(mac(B), mac(A), 4);
    a.send_frame(&to_b).expect("send");
    bench.expect_frame(&b, &to_b, "B (daemon)");
    bench.expect_silence(&c, "C (bess)");

    // A minimum-size (ARP-sized, unpadded) and a full-size frame.
    let short = eth_frame(mac(B), mac(A), TEST_ETHERTYPE, 28);
    a.send_frame(&short).expect("send");
    bench.expect_frame(&b, &short, "B (daemon)");
    let full = eth_frame(mac(A), mac(B), TEST_ETHERTYPE, 1500);
    b.send_frame(&full).expect("send");
    bench.expect_frame(&a, &full, "A (bess)");
}

#[test]
fn two_bess_clients_exchange_frames() {
    let bench = Bench::start();
    let a = bench.attach_bess();
    let b = bench.attach_bess();
    let pid = std::process::id();
    // The probe of `Bench::start` and A and B, each with our credentials.
    bench.wait_log(&format!("{ATTACHED} (pid {pid} uid"), 3);

    assert_forwards_both_ways(&bench, &a, A, &b, B, 10);
    let to_b = tagged_frame(mac(B), mac(A), 12);
    a.send_frame(&to_b).expect("send");
    bench.expect_frame(&b, &to_b, "B");
    let to_a = tagged_frame(mac(A), mac(B), 13);
    b.send_frame(&to_a).expect("send");
    bench.expect_frame(&a, &to_a, "A");

    // Jumbo frames up to the documented maximum pass intact.
    let jumbo = eth_frame(mac(A), mac(B), TEST_ETHERTYPE, MAX_FRAME - 14);
    b.send_frame(&jumbo).expect("send");
    bench.expect_frame(&a, &jumbo, "A (jumbo)");
    bench.expect_silence(&b, "B (the sender)");
}

#[test]
fn runt_and_oversize_messages_are_dropped_and_the_connection_stays() {
    let mut bench = Bench::start();
    let a = bench.attach_bess();
    let b = bench.attach_bess();
    let full = tagged_frame(BROADCAST, mac(A), 20);
    for len in [1, 6, 13] {
        a.send_frame(&full[..len]).expect("send runt");
    }
    let oversize = eth_frame(BROADCAST, mac(A), TEST_ETHERTYPE, 10_000 - 14);
    a.send_frame(&oversize).expect("send oversize");
    let too_big_by_one = eth_frame(BROADCAST, mac(A), TEST_ETHERTYPE, MAX_FRAME + 1 - 14);
    a.send_frame(&too_big_by_one).expect("send oversize");
    let normal = tagged_frame(BROADCAST, mac(A), 21);
    a.send_frame(&normal).expect("send");
    // Frames from one port are forwarded in order, so the first thing B
    // receives must be the normal frame.
    bench.expect_frame(&b, &normal, "B");

    // The sender's connection is still open and works both ways.
    match a.recv(SILENCE).expect("recv") {
        BessRecv::Nothing => {}
        BessRecv::Eof => panic!(
            "the switch closed the connection after a bad message\n{}",
            bench.logs()
        ),
        BessRecv::Frame(frame) => panic!(
            "the sender received a frame ({} bytes)\n{}",
            frame.len(),
            bench.logs()
        ),
    }
    assert_forwards_both_ways(&bench, &a, A, &b, B, 22);
    bench.assert_alive();
}

#[test]
fn closing_a_bess_connection_removes_its_port_and_reconnecting_works() {
    let bench = Bench::start();
    let a = bench.attach_daemon();
    let b = bench.attach_bess();
    let c = bench.attach_bess();
    let hello_b = tagged_frame(BROADCAST, mac(B), 30);
    b.send_frame(&hello_b).expect("send");
    bench.expect_frame(&a, &hello_b, "A");
    c.drain();

    // Learned: unicast to B reaches only B.
    let to_b = tagged_frame(mac(B), mac(A), 31);
    a.send_frame(&to_b).expect("send");
    bench.expect_frame(&b, &to_b, "B");
    bench.expect_silence(&c, "C");

    let disconnects = bench.log_count("disconnected");
    drop(b);
    bench.wait_log("disconnected", disconnects + 1);
    // The switch notices the hang-up asynchronously: keep sending to B's
    // MAC until the frames flood to C, i.e. B's port and its MAC are gone.
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let mut tag = 100;
    loop {
        let frame = tagged_frame(mac(B), mac(A), tag);
        a.send_frame(&frame).expect("send");
        if c.recv_frame(Duration::from_millis(100)).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "frames to a departed bess port's MAC never flooded\n{}",
            bench.logs()
        );
        tag += 1;
    }
    c.drain();

    // B comes back (as UML does at the next link-up): a working port again,
    // and its MAC is learned on the new port.
    let b = bench.attach_bess();
    assert_forwards_both_ways(&bench, &a, A, &b, B, 200);
    c.drain();
    let to_new_b = tagged_frame(mac(B), mac(A), 202);
    a.send_frame(&to_new_b).expect("send");
    bench.expect_frame(&b, &to_new_b, "B (reconnected)");
    bench.expect_silence(&c, "C");
    assert_forwards_both_ways(&bench, &c, C, &b, D, 203);
}

#[test]
fn connect_close_cycles_do_not_leak() {
    const CYCLES: usize = 200;
    let mut bench = Bench::start();
    let a = bench.attach_bess();
    let b = bench.attach_daemon();
    assert_forwards_both_ways(&bench, &a, A, &b, B, 40);
    // One warm-up cycle, so lazily created state is counted in the baseline.
    drop(bench.attach_bess());
    let fds_before = settled_fd_count(&bench.switch, 0);
    for cycle in 0..CYCLES {
        let client = BessClient::connect(bench.bess())
            .unwrap_or_else(|err| panic!("cycle {cycle}: connect failed: {err}\n{}", bench.logs()));
        if cycle % 10 == 9 {
            // Now and then a port that talks before it goes.
            client
                .send_frame(&tagged_frame(BROADCAST, mac(C), 1000 + cycle as u32))
                .expect("send");
        }
        drop(client);
    }
    let fds_after = settled_fd_count(&bench.switch, fds_before + FD_SLACK);
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "switch fds grew from {fds_before} to {fds_after} after {CYCLES} bess cycles\n{}",
        bench.logs()
    );
    // Every connection became a port and was removed again: the probe,
    // the warm-up and the cycles.
    bench.wait_log("disconnected (bess client", CYCLES + 2);
    bench.assert_alive();
    a.drain();
    b.drain();
    assert_forwards_both_ways(&bench, &a, A, &b, B, 42);
}

// ---------------------------------------------------------------------------
// The socket file and the process lifecycle
// ---------------------------------------------------------------------------

#[test]
fn bess_socket_mode_defaults_to_0600_and_follows_mode() {
    let bench = Bench::start();
    assert_eq!(
        mode_of(bench.bess()),
        0o600,
        "default mode of {}\n{}",
        bench.bess().display(),
        bench.logs()
    );
    let bench = Bench::start_with(&["--mode", "0660"]);
    assert_eq!(
        mode_of(bench.bess()),
        0o660,
        "--mode 0660 on {}\n{}",
        bench.bess().display(),
        bench.logs()
    );
}

#[test]
fn sigterm_exits_0_and_removes_the_bess_socket() {
    let mut bench = Bench::start();
    let a = bench.attach_bess();
    let b = bench.attach_bess();
    assert_forwards_both_ways(&bench, &a, A, &b, B, 50);
    let status = bench
        .switch
        .terminate(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("switch ignored SIGTERM\n{}", bench.logs()));
    assert_eq!(status.code(), Some(0), "{status}\n{}", bench.logs());
    assert!(
        !bench.bess().exists(),
        "bess socket {} left behind\n{}",
        bench.bess().display(),
        bench.logs()
    );
    assert!(
        !bench.switch.ctl_path().exists(),
        "control socket left behind"
    );
    // The clients see their connections end.
    assert!(a.sees_eof_within(DELIVERY_TIMEOUT), "A never saw EOF");
}

#[test]
fn a_second_switch_on_a_live_bess_socket_exits_69_and_the_first_keeps_working() {
    let mut bench = Bench::start();
    let a = bench.attach_bess();
    let other = tempfile::Builder::new()
        .prefix("uml-bess.")
        .tempdir()
        .expect("temp dir");
    let bess = bench.bess().to_str().expect("UTF-8").to_owned();
    let mut second = SwitchProcess::spawn(&other.path().join("ctl"), &["--bess", &bess])
        .expect("spawn second switch");
    let status = second
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("second switch still running\n{}", second.logs()));
    assert_eq!(
        status.code(),
        Some(EXIT_ALREADY_RUNNING),
        "second switch: {status}\n{}",
        second.logs()
    );
    assert!(
        bench.bess().exists(),
        "the live switch's bess socket was removed"
    );
    bench.assert_alive();
    let b = bench.attach_bess();
    assert_forwards_both_ways(&bench, &a, A, &b, B, 60);
}

#[test]
fn a_stale_bess_socket_file_is_replaced() {
    let dir = bess_dir();
    let bess = dir.path().join("bess.sock");
    {
        let stale = Socket::new(Domain::UNIX, Type::SEQPACKET, None).expect("socket");
        stale
            .bind(&SockAddr::unix(&bess).expect("address"))
            .expect("bind stale socket");
        stale.listen(1).expect("listen");
    }
    assert!(bess.exists(), "stale socket file should remain");
    assert!(
        BessClient::connect(&bess).is_err(),
        "nobody should listen on the stale socket"
    );
    let switch = SwitchProcess::start(&["--bess", bess.to_str().expect("UTF-8")]);
    let bench = Bench {
        switch,
        bess,
        _dir: dir,
    };
    bench.wait_bess_ready();
    let a = bench.attach_bess();
    let b = bench.attach_bess();
    assert_forwards_both_ways(&bench, &a, A, &b, B, 70);
}
