//! QEMU's `-netdev stream` transport (`--stream PATH`) over real sockets:
//! every connection is a port, each frame follows a 4-byte big-endian
//! length. A test client writes and reads the framing by hand.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use uml_switch_tests::client::{mac, tagged_frame, Client, DataSocketKind, BROADCAST};
use uml_switch_tests::daemon::SwitchProcess;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_millis(300);

/// A switch with `--stream`, and the path of its stream socket.
struct StreamBench {
    switch: SwitchProcess,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl StreamBench {
    fn start() -> StreamBench {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("qemu.sock");
        let switch = SwitchProcess::start(&["--stream", path.to_str().unwrap()]);
        StreamBench {
            switch,
            path,
            _dir: dir,
        }
    }

    fn connect(&self) -> StreamClient {
        let stream = UnixStream::connect(&self.path).unwrap_or_else(|e| {
            panic!(
                "connect to {}: {e}\n{}",
                self.path.display(),
                self.switch.logs()
            )
        });
        stream
            .set_read_timeout(Some(DELIVERY_TIMEOUT))
            .expect("timeout");
        StreamClient { stream }
    }

    fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while self.switch.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the switch never logged {count}× `{needle}`\n{}",
                self.switch.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client speaking QEMU's stream framing.
struct StreamClient {
    stream: UnixStream,
}

fn record(frame: &[u8]) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

impl StreamClient {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the stream");
    }

    /// The next record's frame, or `None` after `timeout` or at EOF.
    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        let mut prefix = [0u8; 4];
        match self.stream.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("reading a record: {e}"),
        }
        let mut frame = vec![0u8; u32::from_be_bytes(prefix) as usize];
        self.stream
            .set_read_timeout(Some(DELIVERY_TIMEOUT))
            .expect("timeout");
        self.stream.read_exact(&mut frame).expect("record body");
        Some(frame)
    }

    /// True once the switch has closed the connection (read gives EOF).
    fn closed_by_switch(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(DELIVERY_TIMEOUT))
            .expect("timeout");
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

fn daemon_client(ctl: &Path) -> Client {
    Client::connect(ctl, DataSocketKind::Abstract).expect("daemon client attaches")
}

#[test]
fn records_cut_anywhere_are_reassembled_and_frames_flow_both_ways() {
    let bench = StreamBench::start();
    let mut qemu = bench.connect();
    let uml = daemon_client(bench.switch.ctl_path());
    bench.wait_for_log("stream client", 1);
    let hello = tagged_frame(BROADCAST, mac(0x51), 1);
    let again = tagged_frame(BROADCAST, mac(0x51), 2);
    // One record cut inside its length and inside its frame, then two in
    // one write.
    let first = record(&hello);
    qemu.send(&first[..2]);
    thread::sleep(Duration::from_millis(30));
    qemu.send(&first[2..20]);
    thread::sleep(Duration::from_millis(30));
    let mut rest = first[20..].to_vec();
    rest.extend(record(&again));
    rest.extend(record(&again));
    qemu.send(&rest);
    for expected in [&hello, &again, &again] {
        assert_eq!(
            uml.recv_frame(DELIVERY_TIMEOUT).as_ref(),
            Some(expected),
            "{}",
            bench.switch.logs()
        );
    }
    // The stream client's MAC is learned: unicast comes back as a record.
    let reply = tagged_frame(mac(0x51), mac(0x52), 3);
    uml.send_frame(&reply).expect("send");
    assert_eq!(qemu.recv(DELIVERY_TIMEOUT), Some(reply));
}

#[test]
fn an_impossible_length_closes_only_that_connection() {
    let bench = StreamBench::start();
    let mut broken = bench.connect();
    let mut good = bench.connect();
    let uml = daemon_client(bench.switch.ctl_path());
    bench.wait_for_log("stream client", 2);
    // A runt record is dropped, the connection stays.
    good.send(&record(&[0u8; 5]));
    broken.send(&70_000u32.to_be_bytes());
    assert!(broken.closed_by_switch(), "{}", bench.switch.logs());
    bench.wait_for_log("cannot be a frame", 1);
    let frame = tagged_frame(BROADCAST, mac(0x61), 4);
    good.send(&record(&frame));
    assert_eq!(uml.recv_frame(DELIVERY_TIMEOUT), Some(frame));
    assert!(uml.recv_frame(SILENCE).is_none(), "the runt was forwarded");
}

#[test]
fn a_closed_connection_removes_its_port() {
    let bench = StreamBench::start();
    let qemu = bench.connect();
    bench.wait_for_log("port 1 connected: stream client", 1);
    drop(qemu);
    bench.wait_for_log("port 1 disconnected (stream client", 1);
    // The number is free again for the next client.
    let _next = bench.connect();
    bench.wait_for_log("port 1 connected: stream client", 2);
}
