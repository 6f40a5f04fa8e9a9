//! Integration tests over real sockets against the running switch daemon.
//!
//! Every test starts its own switch (in a fresh temporary directory) and
//! attaches clients that speak UML's daemon protocol byte for byte (see
//! `uml_switch_tests::client`). All waits are bounded; nothing asserts on
//! speed. "Nothing arrives" is checked by waiting [`SILENCE`] for a frame.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use uml_switch_tests::client::{
    encode_request, eth_frame, mac, tagged_frame, uml_request, Client, DataAddr, DataSocket,
    DataSocketKind, XorShift, BROADCAST, MAGIC, REQUEST_LEN, REQ_NEW_CONTROL, TEST_ETHERTYPE,
    VERSION,
};
use uml_switch_tests::daemon::{
    switch_binary, SwitchProcess, EXIT_ALREADY_RUNNING, EXIT_USAGE, READY_TIMEOUT,
};

/// How long a frame that must arrive may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long we listen to conclude that a frame is *not* delivered.
const SILENCE: Duration = Duration::from_millis(300);

/// A control connection that never sends its request must eventually be
/// closed by the switch. We assume a handshake timeout of at most 10 s (the
/// daemon's default `--handshake-timeout` is 5 s) and wait up to 15 s.
const IDLE_CONTROL_CLOSE_BOUND: Duration = Duration::from_secs(15);

/// Bound on the switch closing a control connection once it has received
/// something decisive (a bad request, or EOF). Generous on purpose: it only
/// turns a hang into a failure, it does not measure speed.
const CONTROL_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the switch may take to exit after a signal or a startup error.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra file descriptors tolerated after many connect/disconnect cycles.
const FD_SLACK: usize = 4;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A running switch plus a way to attach clients and check deliveries, with
/// the switch's logs in every failure message.
struct Bench {
    switch: SwitchProcess,
}

impl Bench {
    fn start() -> Bench {
        Bench::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Bench {
        Bench {
            switch: SwitchProcess::start(args),
        }
    }

    fn ctl(&self) -> &Path {
        self.switch.ctl_path()
    }

    fn attach(&self, kind: DataSocketKind) -> Client {
        Client::connect(self.ctl(), kind).unwrap_or_else(|err| {
            panic!("{kind:?} client failed to attach: {err}\n{}", self.logs())
        })
    }

    /// A raw connection to the control socket (for misbehaving clients).
    fn connect_control(&self) -> UnixStream {
        UnixStream::connect(self.ctl()).unwrap_or_else(|err| {
            panic!(
                "connect to the control socket failed (switch dead?): {err}\n{}",
                self.logs()
            )
        })
    }

    fn logs(&self) -> String {
        self.switch.logs()
    }

    /// `client` must receive exactly `expected` next.
    fn expect_frame(&self, client: &Client, expected: &[u8], who: &str) {
        match client.recv_frame(DELIVERY_TIMEOUT) {
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
    fn frames_before(&self, client: &Client, expected: &[u8], who: &str) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.recv_frame(left) {
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

    /// `client` must receive nothing for [`SILENCE`].
    fn expect_silence(&self, client: &Client, who: &str) {
        if let Some(frame) = client.recv_frame(SILENCE) {
            panic!(
                "{who} received a frame it must not get ({} bytes, head {:02x?})\n{}",
                frame.len(),
                &frame[..frame.len().min(20)],
                self.logs()
            );
        }
    }

    /// A broadcast from `a` (source MAC `a_mac`) reaches `b`, and one from
    /// `b` reaches `a`. Frames queued earlier are skipped.
    fn assert_forwards_both_ways(&self, a: &Client, a_mac: u8, b: &Client, b_mac: u8, tag: u32) {
        let there = tagged_frame(BROADCAST, mac(a_mac), tag);
        a.send_frame(&there).expect("send broadcast");
        self.frames_before(b, &there, "second port");
        let back = tagged_frame(BROADCAST, mac(b_mac), tag + 1);
        b.send_frame(&back).expect("send broadcast");
        self.frames_before(a, &back, "first port");
    }

    /// The switch process must still be running.
    fn assert_alive(&mut self) {
        if let Some(status) = self.switch.wait_exit(Duration::ZERO) {
            panic!("switch exited: {status}\n{}", self.logs());
        }
    }
}

/// Reads from a control stream until the switch closes it. Fails if the
/// switch sends any byte (a bad request gets no reply) or keeps it open for
/// longer than `timeout`.
fn assert_closed_without_reply(stream: &mut UnixStream, timeout: Duration, bench: &Bench) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "switch kept the control connection open for {timeout:?}\n{}",
                bench.logs()
            );
        }
        stream.set_read_timeout(Some(left)).expect("set timeout");
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!(
                "switch answered a bad request with {n} bytes: {:02x?}\n{}",
                &buf[..n.min(32)],
                bench.logs()
            ),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => return,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("reading the control stream: {err}"),
        }
    }
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

/// Starts a switch with three clients: A abstract, B pathname, C abstract.
fn three_ports() -> (Bench, Client, Client, Client) {
    three_ports_with(&[])
}

/// [`three_ports`] with extra switch arguments.
fn three_ports_with(args: &[&str]) -> (Bench, Client, Client, Client) {
    let bench = Bench::start_with(args);
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Pathname);
    let c = bench.attach(DataSocketKind::Abstract);
    (bench, a, b, c)
}

const A: u8 = 0xa;
const B: u8 = 0xb;
const C: u8 = 0xc;
const D: u8 = 0xd;

// ---------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------

#[test]
fn switch_binary_is_the_one_cargo_built_for_this_crate() {
    assert_eq!(
        switch_binary(),
        Path::new(env!("CARGO_BIN_EXE_uml-switch-under-test"))
    );
}

#[test]
fn handshake_reply_is_one_sockaddr_then_silence() {
    let bench = Bench::start();
    for kind in [DataSocketKind::Abstract, DataSocketKind::Pathname] {
        let mut client = bench.attach(kind);
        // (Client::connect already required exactly 110 bytes in one read.)
        if let DataAddr::Pathname(path) = client.switch_addr() {
            assert!(path.exists(), "reply names a missing socket {path:?}");
        }
        assert_ne!(
            client.switch_addr(),
            client.own_addr(),
            "the switch answered with the client's own address"
        );
        // After the 110-byte reply the control stream stays open and silent.
        let control = client.control().expect("control stream open");
        control
            .set_read_timeout(Some(SILENCE))
            .expect("set timeout");
        let mut byte = [0u8; 1];
        match control.read(&mut byte) {
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) => panic!("switch closed the control stream of a live port"),
            other => panic!("unexpected data or error after the reply: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------

#[test]
fn broadcast_reaches_every_other_port_and_not_the_sender() {
    let (bench, a, b, c) = three_ports();
    let frame = tagged_frame(BROADCAST, mac(A), 1);
    a.send_frame(&frame).expect("send");
    bench.expect_frame(&b, &frame, "B");
    bench.expect_frame(&c, &frame, "C");
    bench.expect_silence(&a, "A (the sender)");
}

#[test]
fn multicast_floods_like_broadcast() {
    let (bench, a, b, c) = three_ports();
    let frame = tagged_frame([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01], mac(B), 2);
    b.send_frame(&frame).expect("send");
    bench.expect_frame(&a, &frame, "A");
    bench.expect_frame(&c, &frame, "C");
    bench.expect_silence(&b, "B (the sender)");
}

#[test]
fn unknown_unicast_floods_to_the_other_ports() {
    let (bench, a, b, c) = three_ports();
    let frame = tagged_frame(mac(0x77), mac(A), 3);
    a.send_frame(&frame).expect("send");
    bench.expect_frame(&b, &frame, "B");
    bench.expect_frame(&c, &frame, "C");
    bench.expect_silence(&a, "A (the sender)");
}

#[test]
fn learned_unicast_reaches_exactly_its_port() {
    learned_unicast_reaches_exactly_its_port_with(&[]);
}

/// With two data-plane workers, ports 1 and 3 (A, C) are read by one and
/// port 2 (B) by the other: what one learns must reach the other.
#[test]
fn learned_unicast_reaches_exactly_its_port_with_two_workers() {
    learned_unicast_reaches_exactly_its_port_with(&["--threads", "2"]);
}

fn learned_unicast_reaches_exactly_its_port_with(args: &[&str]) {
    let (bench, a, b, c) = three_ports_with(args);
    // B and C announce themselves; once A has seen both, both are learned
    // (a switch learns the source before forwarding).
    let hello_b = tagged_frame(BROADCAST, mac(B), 10);
    let hello_c = tagged_frame(BROADCAST, mac(C), 11);
    b.send_frame(&hello_b).expect("send");
    bench.expect_frame(&a, &hello_b, "A");
    c.send_frame(&hello_c).expect("send");
    bench.expect_frame(&a, &hello_c, "A");
    b.drain();
    c.drain();

    let to_b = tagged_frame(mac(B), mac(A), 12);
    a.send_frame(&to_b).expect("send");
    bench.expect_frame(&b, &to_b, "B");
    bench.expect_silence(&c, "C");
    bench.expect_silence(&a, "A");

    let to_c = tagged_frame(mac(C), mac(A), 13);
    a.send_frame(&to_c).expect("send");
    bench.expect_frame(&c, &to_c, "C");
    bench.expect_silence(&b, "B");
}

#[test]
fn hub_mode_floods_even_learned_unicast() {
    let bench = Bench::start_with(&["--hub"]);
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Pathname);
    let c = bench.attach(DataSocketKind::Abstract);
    // B announces itself; a switch would now send frames for B to B only.
    let hello_b = tagged_frame(BROADCAST, mac(B), 30);
    b.send_frame(&hello_b).expect("send");
    bench.expect_frame(&a, &hello_b, "A");
    bench.expect_frame(&c, &hello_b, "C");
    let to_b = tagged_frame(mac(B), mac(A), 31);
    a.send_frame(&to_b).expect("send");
    bench.expect_frame(&b, &to_b, "B");
    bench.expect_frame(&c, &to_b, "C (hub mode floods)");
    bench.expect_silence(&a, "A (the sender)");
}

/// Two clients that ask for the same port share it: they hear the rest of
/// the switch, not each other, and frames for the port reach both.
#[test]
fn clients_asking_for_one_port_share_it() {
    let bench = Bench::start();
    let attach_to_5 = |kind| {
        Client::connect_to_port(bench.ctl(), kind, 5)
            .unwrap_or_else(|err| panic!("attach to port 5: {err}\n{}", bench.logs()))
    };
    let a1 = attach_to_5(DataSocketKind::Abstract);
    let a2 = attach_to_5(DataSocketKind::Pathname);
    let c = bench.attach(DataSocketKind::Abstract);
    let logs = bench.logs();
    assert_eq!(
        logs.matches("port 5 connected").count(),
        2,
        "both clients should be on port 5\n{logs}"
    );
    // A frame from one sharer reaches the rest of the switch, not the other.
    let from_a1 = tagged_frame(BROADCAST, mac(A), 40);
    a1.send_frame(&from_a1).expect("send");
    bench.expect_frame(&c, &from_a1, "C");
    bench.expect_silence(&a2, "A2 (shares A1's port)");
    // Frames for the port reach both sharers.
    let to_a = tagged_frame(mac(A), mac(C), 41);
    c.send_frame(&to_a).expect("send");
    bench.expect_frame(&a1, &to_a, "A1");
    bench.expect_frame(&a2, &to_a, "A2");
    // One sharer leaving keeps the port for the other.
    drop(a1);
    bench.frames_before(
        &a2,
        &{
            let f = tagged_frame(BROADCAST, mac(C), 42);
            c.send_frame(&f).expect("send");
            f
        },
        "A2 after A1 left",
    );
}

#[test]
fn a_port_number_out_of_range_is_refused_at_once() {
    let bench = Bench::start_with(&["--max-ports", "8"]);
    for port in [8, 300, 0x00ff_ffff] {
        // Closed at once: the read of the reply sees EOF, not its timeout.
        match Client::connect_to_port(bench.ctl(), DataSocketKind::Abstract, port) {
            Ok(_) => panic!("port {port} was accepted\n{}", bench.logs()),
            Err(err) => assert_eq!(
                err.kind(),
                ErrorKind::UnexpectedEof,
                "port {port}: {err}\n{}",
                bench.logs()
            ),
        }
    }
    assert!(bench.logs().contains("out of range"), "{}", bench.logs());
    // The switch still serves.
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Abstract);
    bench.assert_forwards_both_ways(&a, A, &b, B, 43);
}

/// A switch that may not write to a client's socket file refuses the
/// client at once, and its log names the socket and the error.
#[test]
fn a_client_the_switch_cannot_reach_is_refused_with_the_path_and_errno() {
    const NOBODY: u32 = 65534;
    // The switch runs as nobody; the client's socket sits in a directory
    // only root may enter.
    let switch = SwitchProcess::start_as(NOBODY, NOBODY, &[]);
    match Client::connect(switch.ctl_path(), DataSocketKind::Pathname) {
        Ok(_) => panic!(
            "the switch attached a client it cannot reach\n{}",
            switch.logs()
        ),
        Err(err) => assert_eq!(
            err.kind(),
            ErrorKind::UnexpectedEof,
            "{err}\n{}",
            switch.logs()
        ),
    }
    let logs = switch.logs();
    assert!(
        logs.contains("cannot reach the client's data socket /")
            && logs.contains("Permission denied"),
        "the refusal should name the socket and the error\n{logs}"
    );
    // Clients it can reach still attach and forward.
    let a = Client::connect(switch.ctl_path(), DataSocketKind::Abstract).expect("attach");
    let b = Client::connect(switch.ctl_path(), DataSocketKind::Abstract).expect("attach");
    let frame = tagged_frame(BROADCAST, mac(A), 44);
    a.send_frame(&frame).expect("send");
    assert_eq!(
        b.recv_frame(DELIVERY_TIMEOUT),
        Some(frame),
        "{}",
        switch.logs()
    );
}

#[test]
fn full_size_frame_is_delivered_intact() {
    let bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Abstract);
    let frame = eth_frame(BROADCAST, mac(A), TEST_ETHERTYPE, 1500);
    assert_eq!(frame.len(), 1514);
    a.send_frame(&frame).expect("send");
    bench.expect_frame(&b, &frame, "B");
}

#[test]
fn frame_to_the_senders_own_mac_is_never_reflected() {
    let (bench, a, b, _c) = three_ports();
    // Before and after A's MAC is learned.
    let to_self_unknown = tagged_frame(mac(A), mac(A), 20);
    a.send_frame(&to_self_unknown).expect("send");
    let announce = tagged_frame(BROADCAST, mac(A), 21);
    a.send_frame(&announce).expect("send");
    bench.frames_before(&b, &announce, "B");
    let to_self_known = tagged_frame(mac(A), mac(A), 22);
    a.send_frame(&to_self_known).expect("send");
    // Frames from one port are handled in order: once B has the marker,
    // anything reflected to A has been sent already.
    let marker = tagged_frame(BROADCAST, mac(A), 23);
    a.send_frame(&marker).expect("send");
    bench.frames_before(&b, &marker, "B");
    bench.expect_silence(&a, "A (the sender)");
}

#[test]
fn closing_the_control_connection_removes_the_port() {
    let (bench, a, mut b, c) = three_ports();
    let hello_b = tagged_frame(BROADCAST, mac(B), 30);
    b.send_frame(&hello_b).expect("send");
    bench.expect_frame(&a, &hello_b, "A");
    c.drain();

    // Learned: unicast to B reaches only B.
    let to_b = tagged_frame(mac(B), mac(A), 31);
    a.send_frame(&to_b).expect("send");
    bench.expect_frame(&b, &to_b, "B");
    bench.expect_silence(&c, "C");

    b.close();
    // The switch notices the hang-up asynchronously: keep sending to B's MAC
    // until the frames flood to C, i.e. B's port and its MAC are gone.
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
            "frames to a departed port's MAC never flooded\n{}",
            bench.logs()
        );
        tag += 1;
    }
    // From now on nothing reaches B's (still open) data socket.
    c.drain();
    b.drain();
    let after = tagged_frame(mac(B), mac(A), 200);
    a.send_frame(&after).expect("send");
    bench.expect_frame(&c, &after, "C");
    let broadcast = tagged_frame(BROADCAST, mac(A), 201);
    a.send_frame(&broadcast).expect("send");
    bench.expect_frame(&c, &broadcast, "C");
    bench.expect_silence(&b, "B (departed)");

    // A new client can attach, and B's old MAC is not bound to its port.
    let d = bench.attach(DataSocketKind::Pathname);
    let to_old_b = tagged_frame(mac(B), mac(A), 202);
    a.send_frame(&to_old_b).expect("send");
    bench.expect_frame(&c, &to_old_b, "C");
    bench.expect_frame(&d, &to_old_b, "D (new port)");
    bench.assert_forwards_both_ways(&a, A, &d, D, 203);
}

#[test]
fn datagrams_from_a_socket_that_is_not_a_port_are_not_forwarded() {
    let (bench, a, b, c) = three_ports();
    let intruder_frame = tagged_frame(BROADCAST, mac(0x66), 40);
    let target = a.switch_addr().to_socket_addr().expect("address");

    // A bound socket with a UML-like abstract name, and an unbound one.
    // The switch's data socket may be connected to A, in which case the
    // kernel refuses the send (EPERM): either way nothing may be delivered.
    let bound = DataSocket::bind(DataSocketKind::Abstract).expect("bind");
    let _ = bound.socket.send_to_addr(&intruder_frame, &target);
    let unbound = UnixDatagram::unbound().expect("socket");
    let _ = unbound.send_to_addr(&intruder_frame, &target);

    // Then a genuine frame from A through the same switch socket.
    let marker = tagged_frame(BROADCAST, mac(A), 41);
    a.send_frame(&marker).expect("send");
    for (client, who) in [(&b, "B"), (&c, "C")] {
        let before = bench.frames_before(client, &marker, who);
        assert!(
            before.is_empty(),
            "{who} received {} frame(s) from a non-port\n{}",
            before.len(),
            bench.logs()
        );
    }
    bench.expect_silence(&a, "A");
}

#[test]
fn runt_and_oversize_frames_are_dropped() {
    let bench = Bench::start();
    let a = bench.attach(DataSocketKind::Pathname);
    let b = bench.attach(DataSocketKind::Abstract);
    let full = tagged_frame(BROADCAST, mac(A), 50);
    for len in [0, 1, 6, 13] {
        a.send_frame(&full[..len]).expect("send runt");
    }
    let oversize = eth_frame(BROADCAST, mac(A), TEST_ETHERTYPE, 65_000 - 14);
    a.send_frame(&oversize).expect("send oversize");
    let normal = tagged_frame(BROADCAST, mac(A), 51);
    a.send_frame(&normal).expect("send");
    // Frames from one port are forwarded in order, so the first thing B
    // receives must be the normal frame.
    bench.expect_frame(&b, &normal, "B");
}

// ---------------------------------------------------------------------------
// Bad control connections
// ---------------------------------------------------------------------------

/// Runs `abuse` against a switch that has two working ports, then checks
/// those ports still forward and a new client can still attach.
fn survives_bad_control_client(abuse: impl FnOnce(&Bench)) {
    let mut bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Pathname);
    bench.assert_forwards_both_ways(&a, A, &b, B, 60);
    abuse(&bench);
    bench.assert_alive();
    bench.assert_forwards_both_ways(&a, A, &b, B, 62);
    let c = bench.attach(DataSocketKind::Abstract);
    bench.assert_forwards_both_ways(&a, A, &c, C, 64);
}

/// Sends `request` in one write on a fresh control connection and expects
/// the switch to close it without replying.
fn refused_request(bench: &Bench, request: &[u8]) {
    let mut stream = bench.connect_control();
    stream.write_all(request).expect("write request");
    assert_closed_without_reply(&mut stream, CONTROL_CLOSE_TIMEOUT, bench);
}

#[test]
fn wrong_magic_is_refused() {
    survives_bad_control_client(|bench| {
        let data = DataSocket::bind(DataSocketKind::Abstract).expect("bind");
        let request = encode_request(
            0xdead_beef,
            VERSION,
            REQ_NEW_CONTROL,
            &data.addr.to_sockaddr_un(),
        );
        refused_request(bench, &request);
    });
}

#[test]
fn wrong_versions_are_refused() {
    survives_bad_control_client(|bench| {
        for version in [2, 4, 0xffff_ffff] {
            let data = DataSocket::bind(DataSocketKind::Abstract).expect("bind");
            let request =
                encode_request(MAGIC, version, REQ_NEW_CONTROL, &data.addr.to_sockaddr_un());
            refused_request(bench, &request);
        }
    });
}

#[test]
fn request_for_a_missing_data_socket_is_refused() {
    survives_bad_control_client(|bench| {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = DataAddr::Pathname(dir.path().join("nobody-here"));
        refused_request(bench, &uml_request(&missing));
    });
}

#[test]
fn short_request_then_half_close_is_dropped() {
    survives_bad_control_client(|bench| {
        let data = DataSocket::bind(DataSocketKind::Abstract).expect("bind");
        let request = uml_request(&data.addr);
        for len in [1, 11, 60, REQUEST_LEN - 3] {
            let mut stream = bench.connect_control();
            stream.write_all(&request[..len]).expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            assert_closed_without_reply(&mut stream, CONTROL_CLOSE_TIMEOUT, bench);
        }
    });
}

#[test]
fn a_megabyte_of_garbage_is_dropped() {
    survives_bad_control_client(|bench| {
        let mut garbage = vec![0u8; 1 << 20];
        XorShift::seeded().fill(&mut garbage);
        let mut stream = bench.connect_control();
        stream
            .set_write_timeout(Some(CONTROL_CLOSE_TIMEOUT))
            .expect("set timeout");
        // The switch may close after the first bytes: EPIPE, ECONNRESET or a
        // stalled write are all fine here, what matters is the close below.
        let mut written = 0;
        while written < garbage.len() {
            match stream.write(&garbage[written..]) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        assert_closed_without_reply(&mut stream, CONTROL_CLOSE_TIMEOUT, bench);
    });
}

#[test]
fn a_silent_control_client_is_eventually_dropped_and_blocks_nobody() {
    survives_bad_control_client(|bench| {
        let mut silent = bench.connect_control();
        // While it idles, others attach and talk.
        let x = bench.attach(DataSocketKind::Abstract);
        let y = bench.attach(DataSocketKind::Pathname);
        bench.assert_forwards_both_ways(&x, 0x1a, &y, 0x1b, 70);
        // See IDLE_CONTROL_CLOSE_BOUND: assumes a ~10 s handshake timeout.
        assert_closed_without_reply(&mut silent, IDLE_CONTROL_CLOSE_BOUND, bench);
    });
}

#[test]
fn clients_hanging_up_before_the_reply_leave_nothing_behind() {
    let mut bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Pathname);
    bench.assert_forwards_both_ways(&a, A, &b, B, 80);
    let fds_before = bench.switch.open_fd_count().expect("fd count");
    for round in 0..20 {
        let kind = if round % 2 == 0 {
            DataSocketKind::Abstract
        } else {
            DataSocketKind::Pathname
        };
        let data = DataSocket::bind(kind).expect("bind");
        let mut stream = bench.connect_control();
        stream.write_all(&uml_request(&data.addr)).expect("write");
        drop(stream);
    }
    let fds_after = settled_fd_count(&bench.switch, fds_before + FD_SLACK);
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "switch fds grew from {fds_before} to {fds_after}\n{}",
        bench.logs()
    );
    bench.assert_alive();
    bench.assert_forwards_both_ways(&a, A, &b, B, 82);
    let c = bench.attach(DataSocketKind::Abstract);
    bench.assert_forwards_both_ways(&a, A, &c, C, 84);
}

#[test]
fn many_connect_disconnect_cycles_do_not_leak() {
    const CYCLES: usize = 500;
    let mut bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Pathname);
    bench.assert_forwards_both_ways(&a, A, &b, B, 90);
    // One warm-up cycle, so lazily created state is counted in the baseline.
    drop(bench.attach(DataSocketKind::Abstract));
    let fds_before = settled_fd_count(&bench.switch, 0);
    for cycle in 0..CYCLES {
        let kind = if cycle % 10 == 9 {
            DataSocketKind::Pathname
        } else {
            DataSocketKind::Abstract
        };
        let mut client = Client::connect(bench.ctl(), kind)
            .unwrap_or_else(|err| panic!("cycle {cycle}: attach failed: {err}\n{}", bench.logs()));
        client.close();
    }
    let fds_after = settled_fd_count(&bench.switch, fds_before + FD_SLACK);
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "switch fds grew from {fds_before} to {fds_after} after {CYCLES} cycles\n{}",
        bench.logs()
    );
    bench.assert_alive();
    bench.assert_forwards_both_ways(&a, A, &b, B, 92);
}

// ---------------------------------------------------------------------------
// Slow, full and vanished peers
// ---------------------------------------------------------------------------

#[test]
fn ports_that_never_read_or_vanished_do_not_stall_the_switch() {
    const FRAMES: u32 = 1000;
    const END: u32 = 0xe0d0_0000;
    let mut bench = Bench::start();
    // A never reads (its queue fills up); D's data socket is gone while its
    // port stays open (sends to it fail with ECONNREFUSED).
    let never_reads = bench.attach(DataSocketKind::Abstract);
    let _vanished_port = bench.attach(DataSocketKind::Pathname).drop_data_socket();
    let b = bench.attach(DataSocketKind::Pathname);
    let c = bench.attach(DataSocketKind::Abstract);
    b.data_socket()
        .set_write_timeout(Some(DELIVERY_TIMEOUT))
        .expect("set timeout");

    let (received, got_end) = thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut received = 0u32;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match c.recv_frame(Duration::from_millis(200)) {
                    Some(frame) if frame[14..18] == END.to_be_bytes() => {
                        return (received, true);
                    }
                    Some(_) => received += 1,
                    None => {}
                }
            }
            (received, false)
        });
        for tag in 0..FRAMES {
            let frame = tagged_frame(BROADCAST, mac(B), tag);
            if let Err(err) = b.send_frame(&frame) {
                panic!("send {tag} stalled: {err}\n{}", bench.logs());
            }
        }
        // The end marker may be dropped if C's queue is full: repeat it.
        let end = tagged_frame(BROADCAST, mac(B), END);
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while !reader.is_finished() && Instant::now() < deadline {
            b.send_frame(&end).expect("send end marker");
            thread::sleep(Duration::from_millis(50));
        }
        reader.join().expect("reader thread")
    });
    assert!(
        got_end,
        "C never got the end marker ({received} frames)\n{}",
        bench.logs()
    );
    assert!(received > 0, "C received none of the {FRAMES} frames");
    bench.assert_alive();
    bench.assert_forwards_both_ways(&c, C, &b, B, 1);
    drop(never_reads);
}

/// A learns B's MAC; A sends `count` unicast frames to B as fast as its
/// (blocking) sends go, while B reads with short pauses. Returns the tags B
/// received, in order, once the end marker arrived.
fn unicast_burst(bench: &Bench, a: &Client, b: &Client, count: u32) -> Vec<u32> {
    const END: u32 = 0xe0d0_0001;
    let hello_b = tagged_frame(BROADCAST, mac(B), 0xb0b0);
    b.send_frame(&hello_b).expect("send");
    bench.frames_before(a, &hello_b, "A");
    a.data_socket()
        .set_write_timeout(Some(DELIVERY_TIMEOUT))
        .expect("set timeout");
    thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut tags = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(frame) = b.recv_frame(Duration::from_millis(200)) {
                    let tag = u32::from_be_bytes(frame[14..18].try_into().unwrap());
                    if tag == END {
                        return tags;
                    }
                    tags.push(tag);
                    if tags.len() % 100 == 0 {
                        thread::sleep(Duration::from_micros(300));
                    }
                }
            }
            panic!("B never got the end marker ({} frames)", tags.len());
        });
        for tag in 0..count {
            if let Err(err) = a.send_frame(&tagged_frame(mac(B), mac(A), tag)) {
                panic!("A's send {tag} stalled: {err}\n{}", bench.logs());
            }
        }
        a.send_frame(&tagged_frame(mac(B), mac(A), END))
            .expect("send end marker");
        reader.join().expect("reader thread")
    })
}

/// A client that keeps up loses nothing, however fast the sender: what its
/// 10-datagram socket queue cannot take waits in the switch, and the
/// sender is held back meanwhile.
#[test]
fn a_fast_sender_loses_nothing_to_a_receiver_that_keeps_up() {
    const FRAMES: u32 = 5000;
    let bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Abstract);
    let tags = unicast_burst(&bench, &a, &b, FRAMES);
    let expected: Vec<u32> = (0..FRAMES).collect();
    if tags != expected {
        let missing = FRAMES as usize - tags.len();
        panic!(
            "B got {} of {FRAMES} frames ({missing} lost or reordered)\n{}",
            tags.len(),
            bench.logs()
        );
    }
}

/// A client that never reads cannot hold back the ports that send to it
/// for long: once it is seen to make no progress, its frames are dropped
/// and its senders flow on.
#[test]
fn a_receiver_that_never_reads_does_not_stall_its_sender() {
    let bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Abstract);
    let c = bench.attach(DataSocketKind::Pathname);
    let hello_b = tagged_frame(BROADCAST, mac(B), 0xb0b1);
    b.send_frame(&hello_b).expect("send");
    bench.frames_before(&a, &hello_b, "A");
    // B never reads again; A sends it far more than any queue holds.
    a.data_socket()
        .set_write_timeout(Some(DELIVERY_TIMEOUT))
        .expect("set timeout");
    for tag in 0..3000 {
        if let Err(err) = a.send_frame(&tagged_frame(mac(B), mac(A), tag)) {
            panic!("A's send {tag} stalled: {err}\n{}", bench.logs());
        }
    }
    let to_c = tagged_frame(mac(0x77), mac(A), 0xc0c0);
    a.send_frame(&to_c).expect("send");
    bench.frames_before(&c, &to_c, "C");
}

// ---------------------------------------------------------------------------
// Process lifecycle and exit codes
// ---------------------------------------------------------------------------

#[test]
fn a_second_switch_on_a_live_socket_exits_69_and_the_first_keeps_working() {
    let mut bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let mut second = SwitchProcess::spawn(bench.ctl(), &[]).expect("spawn second switch");
    let status = second
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("second switch still running\n{}", second.logs()));
    assert_eq!(
        status.code(),
        Some(EXIT_ALREADY_RUNNING),
        "second switch: {status}\n{}",
        second.logs()
    );
    assert!(bench.ctl().exists(), "the live switch's socket was removed");
    bench.assert_alive();
    let b = bench.attach(DataSocketKind::Pathname);
    bench.assert_forwards_both_ways(&a, A, &b, B, 300);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl = dir.path().join("ctl");
    drop(UnixListener::bind(&ctl).expect("bind stale socket"));
    assert!(ctl.exists(), "stale socket file should remain");
    assert!(UnixStream::connect(&ctl).is_err(), "nobody should listen");

    let mut switch = SwitchProcess::spawn(&ctl, &[]).expect("spawn");
    if let Err(err) = switch.wait_ready(READY_TIMEOUT) {
        panic!(
            "switch did not replace the stale socket: {err}\n{}",
            switch.logs()
        );
    }
    let bench = Bench { switch };
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Pathname);
    bench.assert_forwards_both_ways(&a, A, &b, B, 310);
}

fn signal_exits_cleanly(signal: libc::c_int) {
    let mut bench = Bench::start();
    let a = bench.attach(DataSocketKind::Abstract);
    let b = bench.attach(DataSocketKind::Pathname);
    bench.assert_forwards_both_ways(&a, A, &b, B, 320);
    bench.switch.signal(signal).expect("send signal");
    let status = bench
        .switch
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("switch ignored signal {signal}\n{}", bench.logs()));
    assert_eq!(status.code(), Some(0), "{status}\n{}", bench.logs());
    assert!(
        !bench.ctl().exists(),
        "control socket {} left behind",
        bench.ctl().display()
    );
}

#[test]
fn sigterm_exits_0_and_removes_the_socket() {
    signal_exits_cleanly(libc::SIGTERM);
}

#[test]
fn sigint_exits_0_and_removes_the_socket() {
    signal_exits_cleanly(libc::SIGINT);
}

#[test]
fn usage_errors_exit_64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctl = dir.path().join("ctl");
    for args in [&["--no-such-option"][..], &["--max-ports", "lots"][..]] {
        let mut switch = SwitchProcess::spawn(&ctl, args).expect("spawn");
        let status = switch
            .wait_exit(EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("switch {args:?} still running\n{}", switch.logs()));
        assert_eq!(
            status.code(),
            Some(EXIT_USAGE),
            "{args:?}: {status}\n{}",
            switch.logs()
        );
    }
}
