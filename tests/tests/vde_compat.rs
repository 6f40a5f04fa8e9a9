//! Compatibility with vde2 clients: the switch serving the vde_switch
//! directory layout (`uml-switch --vde-dir DIR`, PROTOCOLS.md §2), driven by
//! Debian's unmodified `vde_plug` (libvdeplug 4) through its stdin/stdout
//! stream framing (§4), next to our UML-style daemon client on `DIR/ctl`.
//!
//! These tests run in the root namespace and need `vde_plug` (Debian's
//! `vdeplug`, installed with `vde2` by `./run-tests.sh`); without it they
//! fail rather than skip.
//!
//! `VDE_COMPAT_SWITCH=vde_switch cargo test --test vde_compat` runs the
//! tests that describe behaviour vde2's own `vde_switch -s DIR -n 256` has
//! too against it (handy to tell harness problems from switch problems);
//! the tests of behaviour only ours has (failing fast on a bad port
//! request, `--mode`, refusing a symlinked directory, ...) then return
//! early, saying so.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use uml_switch_tests::client::{mac, tagged_frame, Client, DataAddr, BROADCAST};
use uml_switch_tests::daemon::SwitchProcess;
use uml_switch_tests::vde::{
    data_sockets, poll_until, require_vde_plug, wait_for_data_sockets, Vde2Switch, VdePlug,
};

/// How long a frame that must arrive may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long we listen to conclude that a frame is *not* delivered.
const SILENCE: Duration = Duration::from_millis(300);

/// How long `vde_plug` may take to attach (its data socket appears).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused `vde_plug` may take to exit: the switch must close
/// the control connection at once, and `vde_plug` exits when it sees that.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// How long the switch may take to remove a departed client's socket file.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the switch may take to exit after a signal or a startup error.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports of the reference `vde_switch` (`-n`), our default `--max-ports`.
const PORTS: u32 = 256;

/// User and group `nobody`/`nogroup` on Debian.
const NOBODY: u32 = 65_534;
const NOGROUP: u32 = 65_534;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Which switch the tests run (`VDE_COMPAT_SWITCH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    /// `uml-switch-under-test --vde-dir DIR` (the default).
    Ours,
    /// vde2's `vde_switch -s DIR -n 256`, for comparison.
    Vde2,
}

fn which() -> Impl {
    match std::env::var("VDE_COMPAT_SWITCH").as_deref() {
        Err(_) | Ok("") | Ok("uml-switch") => Impl::Ours,
        Ok("vde_switch") => Impl::Vde2,
        Ok(other) => panic!("VDE_COMPAT_SWITCH={other:?}: expected `vde_switch` or unset"),
    }
}

/// True (after saying why) if the test checks behaviour that only our
/// switch has and the run is against vde2's `vde_switch`.
fn only_ours(what: &str) -> bool {
    if which() == Impl::Vde2 {
        eprintln!("not run against vde_switch, which lacks this behaviour: {what}");
        return true;
    }
    false
}

enum Switch {
    Ours(SwitchProcess),
    Vde2 {
        switch: Vde2Switch,
        _scratch: TempDir,
    },
}

/// A running switch serving a vde directory, with its logs in every
/// failure message.
struct Bench {
    switch: Switch,
    dir: PathBuf,
}

impl Bench {
    /// The switch chosen by `VDE_COMPAT_SWITCH`, with default options.
    fn start() -> Bench {
        Bench::start_with(&[], &[])
    }

    /// The switch chosen by `VDE_COMPAT_SWITCH`, with sockets of mode 0666
    /// (and so a directory open to everybody).
    fn start_open() -> Bench {
        Bench::start_with(&["--mode", "0666"], &["-m", "0666"])
    }

    /// Our switch with `ours` as extra options, or vde_switch with `vde2`.
    fn start_with(ours: &[&str], vde2: &[&str]) -> Bench {
        require_vde_plug();
        match which() {
            Impl::Ours => Bench::ours(ours),
            Impl::Vde2 => {
                let scratch = tempfile::Builder::new()
                    .prefix("vde-compat.")
                    .tempdir()
                    .expect("create scratch directory");
                let dir = scratch.path().join("vde");
                let switch = Vde2Switch::start(
                    &dir,
                    PORTS,
                    vde2,
                    &scratch.path().join("vde_switch.log"),
                    EXIT_TIMEOUT,
                );
                Bench {
                    switch: Switch::Vde2 {
                        switch,
                        _scratch: scratch,
                    },
                    dir,
                }
            }
        }
    }

    /// Our switch with `--vde-dir <temp>/vde` and `args`.
    fn ours(args: &[&str]) -> Bench {
        require_vde_plug();
        let switch = SwitchProcess::start_vde(args);
        let dir = switch.vde_dir().expect("started with --vde-dir").to_owned();
        Bench {
            switch: Switch::Ours(switch),
            dir,
        }
    }

    /// `DIR`, what libvdeplug clients are given.
    fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ctl`, what UML's daemon transport is given.
    fn ctl(&self) -> PathBuf {
        self.dir.join("ctl")
    }

    fn logs(&self) -> String {
        match &self.switch {
            Switch::Ours(switch) => switch.logs(),
            Switch::Vde2 { switch, .. } => switch.logs(),
        }
    }

    /// The URL for `vde_plug`: `DIR` followed by `suffix` (e.g. `[5]`).
    fn url(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.dir.display())
    }

    /// Starts `vde_plug DIR<suffix>` and waits until it is attached (one
    /// more data socket in `DIR`). Panics with both sides' output if it
    /// exits or does not attach in time.
    fn attach_plug(&self, suffix: &str) -> VdePlug {
        let before = data_sockets(&self.dir).len();
        let url = self.url(suffix);
        let mut plug = VdePlug::spawn(&url).unwrap_or_else(|e| panic!("spawn vde_plug: {e}"));
        let attached = poll_until(ATTACH_TIMEOUT, || {
            if let Some(status) = plug.try_status() {
                return Some(Err(status));
            }
            (data_sockets(&self.dir).len() > before).then_some(Ok(()))
        });
        match attached {
            Some(Ok(())) => plug,
            Some(Err(status)) => panic!(
                "vde_plug {url} exited ({status}) instead of attaching\n--- vde_plug stderr ---\n\
                 {}\n{}",
                plug.stderr(),
                self.logs()
            ),
            None => panic!(
                "vde_plug {url}: no data socket in {} after {ATTACH_TIMEOUT:?}\n\
                 --- vde_plug stderr ---\n{}\n{}",
                self.dir.display(),
                plug.stderr(),
                self.logs()
            ),
        }
    }

    /// Attaches a UML-style daemon client to `DIR/ctl`.
    fn attach_daemon_client(&self) -> Client {
        Client::connect_abstract(&self.ctl())
            .unwrap_or_else(|err| panic!("daemon client failed to attach: {err}\n{}", self.logs()))
    }

    /// `vde_plug` must print `expected` within [`DELIVERY_TIMEOUT`] (other
    /// frames before it are skipped).
    fn plug_expects(&self, plug: &VdePlug, expected: &[u8], who: &str) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut others = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match plug.recv_frame(left) {
                Some(frame) if frame == expected => return,
                Some(_) => others += 1,
                None => panic!(
                    "{who} (vde_plug {}) did not output the expected frame within \
                     {DELIVERY_TIMEOUT:?} ({others} other frames)\n--- vde_plug stderr ---\n\
                     {}\n{}",
                    plug.url(),
                    plug.stderr(),
                    self.logs()
                ),
            }
        }
    }

    /// The daemon client must receive `expected` within
    /// [`DELIVERY_TIMEOUT`] (other frames before it are skipped).
    fn client_expects(&self, client: &Client, expected: &[u8], who: &str) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut others = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.recv_frame(left) {
                Some(frame) if frame == expected => return,
                Some(_) => others += 1,
                None => panic!(
                    "{who} did not receive the expected frame within {DELIVERY_TIMEOUT:?} \
                     ({others} other frames)\n{}",
                    self.logs()
                ),
            }
        }
    }

    /// The daemon client must receive nothing for [`SILENCE`].
    fn client_silent(&self, client: &Client, who: &str) {
        if let Some(frame) = client.recv_frame(SILENCE) {
            panic!(
                "{who} received a frame it must not get ({} bytes, head {:02x?})\n{}",
                frame.len(),
                &frame[..frame.len().min(20)],
                self.logs()
            );
        }
    }

    /// A broadcast from the daemon client (source MAC `client_mac`) comes
    /// out of `vde_plug`, and one written to `vde_plug` (source `plug_mac`)
    /// reaches the client.
    fn assert_plug_and_client_talk(
        &self,
        plug: &mut VdePlug,
        plug_mac: u8,
        client: &Client,
        client_mac: u8,
        tag: u32,
    ) {
        let there = tagged_frame(BROADCAST, mac(client_mac), tag);
        client.send_frame(&there).expect("daemon client sends");
        self.plug_expects(plug, &there, "broadcast from the daemon client");
        let back = tagged_frame(BROADCAST, mac(plug_mac), tag + 1);
        plug.send_frame(&back).expect("write to vde_plug");
        self.client_expects(client, &back, "broadcast from vde_plug");
    }

    /// Our switch's log must say (within a bounded wait) that a client got
    /// port `port`; returns that line.
    fn wait_port_connected_line(&self, port: u32) -> String {
        let needle = format!("port {port} connected");
        poll_until(DELIVERY_TIMEOUT, || {
            self.logs()
                .lines()
                .find(|line| line.contains(&needle))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            panic!(
                "no \"{needle}\" line in the switch log within {DELIVERY_TIMEOUT:?}\n{}",
                self.logs()
            )
        })
    }

    /// The switch process must still be running.
    fn assert_alive(&mut self) {
        let status = match &mut self.switch {
            Switch::Ours(switch) => switch.wait_exit(Duration::ZERO),
            Switch::Vde2 { switch, .. } => switch.try_status(),
        };
        if let Some(status) = status {
            panic!("switch exited: {status}\n{}", self.logs());
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = match &mut self.switch {
            Switch::Ours(switch) => {
                switch.signal(libc::SIGTERM).expect("send SIGTERM");
                switch.wait_exit(EXIT_TIMEOUT)
            }
            Switch::Vde2 { switch, .. } => {
                switch.signal(libc::SIGTERM).expect("send SIGTERM");
                switch.wait_exit(EXIT_TIMEOUT)
            }
        };
        status.unwrap_or_else(|| panic!("switch ignored SIGTERM\n{}", self.logs()))
    }
}

/// `vde_plug URL` must exit unsuccessfully within [`FAIL_FAST`].
fn assert_plug_refused_fast(bench: &Bench, plug: &mut VdePlug, why: &str) {
    let started = Instant::now();
    match plug.wait_exit(FAIL_FAST) {
        Some(status) => {
            assert!(
                !status.success(),
                "vde_plug {} ({why}) exited successfully\n--- vde_plug stderr ---\n{}\n{}",
                plug.url(),
                plug.stderr(),
                bench.logs()
            );
            println!(
                "vde_plug {} ({why}) exited ({status}) after {:?}",
                plug.url(),
                started.elapsed()
            );
        }
        None => panic!(
            "vde_plug {} ({why}) still running after {FAIL_FAST:?}: the switch must close the \
             control connection at once\n--- vde_plug stderr ---\n{}\n{}",
            plug.url(),
            plug.stderr(),
            bench.logs()
        ),
    }
}

/// Permission bits of `path` (without the file type).
fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Waits until `DIR` holds no data socket; panics with what is left.
fn assert_data_sockets_vanish(bench: &Bench, what: &str) {
    let gone = poll_until(CLEANUP_TIMEOUT, || {
        data_sockets(bench.dir()).is_empty().then_some(())
    });
    if gone.is_none() {
        panic!(
            "{what}: data sockets still in {} after {CLEANUP_TIMEOUT:?}: {:?}\n{}",
            bench.dir().display(),
            data_sockets(bench.dir()),
            bench.logs()
        );
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn vde_plug_and_a_daemon_client_exchange_frames() {
    let bench = Bench::start();
    let mut plug = bench.attach_plug("");
    let a = bench.attach_daemon_client();
    let c = bench.attach_daemon_client();
    let (plug_mac, a_mac, c_mac) = (1, 2, 3);

    // Broadcasts both ways; the switch learns both MACs from them.
    bench.assert_plug_and_client_talk(&mut plug, plug_mac, &a, a_mac, 100);
    let from_c = tagged_frame(BROADCAST, mac(c_mac), 102);
    c.send_frame(&from_c).expect("send from c");
    bench.plug_expects(&plug, &from_c, "broadcast from the second daemon client");
    a.drain();
    c.drain();

    // Learned unicast from vde_plug reaches its client only.
    let to_a = tagged_frame(mac(a_mac), mac(plug_mac), 103);
    plug.send_frame(&to_a).expect("write to vde_plug");
    bench.client_expects(&a, &to_a, "unicast from vde_plug");
    bench.client_silent(&c, "the other daemon client (learned unicast)");

    // And learned unicast to vde_plug's MAC comes out of vde_plug.
    let to_plug = tagged_frame(mac(plug_mac), mac(a_mac), 104);
    a.send_frame(&to_plug).expect("send to vde_plug's MAC");
    bench.plug_expects(&plug, &to_plug, "unicast to vde_plug's MAC");
    bench.client_silent(&c, "the other daemon client (unicast to vde_plug)");
}

#[test]
fn two_vde_plugs_exchange_frames() {
    let bench = Bench::start();
    let mut p = bench.attach_plug("");
    let mut q = bench.attach_plug("");
    let big: Vec<u8> = {
        // A full-size 1514-byte frame survives both stream framings.
        let mut frame = tagged_frame(BROADCAST, mac(1), 200);
        frame.resize(1514, 0x5a);
        frame
    };
    p.send_frame(&big).expect("write to vde_plug p");
    bench.plug_expects(&q, &big, "full-size broadcast from p");
    let back = tagged_frame(mac(1), mac(2), 201);
    q.send_frame(&back).expect("write to vde_plug q");
    bench.plug_expects(&p, &back, "unicast from q");
}

#[test]
fn requested_port_5_is_granted_and_carries_frames() {
    let bench = Bench::start();
    let mut plug = bench.attach_plug("[5]");
    match which() {
        Impl::Ours => {
            let line = bench.wait_port_connected_line(5);
            println!("switch log: {line}");
            assert!(
                line.contains("vdeplug:"),
                "the port 5 line lacks vde_plug's description \"vdeplug: ...\": {line}\n{}",
                bench.logs()
            );
        }
        Impl::Vde2 => {
            // vde_switch names data sockets DIR/NNN.F.
            let sockets = data_sockets(bench.dir());
            assert!(
                sockets.iter().any(|s| s
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("005."))),
                "no data socket 005.* for port 5: {sockets:?}\n{}",
                bench.logs()
            );
        }
    }
    let client = bench.attach_daemon_client();
    bench.assert_plug_and_client_talk(&mut plug, 1, &client, 2, 300);
}

#[test]
fn out_of_range_port_fails_fast_and_the_switch_serves_others() {
    if only_ours("closing the control connection on an out-of-range port") {
        return;
    }
    let mut bench = Bench::start();
    let mut bad = VdePlug::spawn(&bench.url("[300]")).expect("spawn vde_plug");
    assert_plug_refused_fast(&bench, &mut bad, "port 300 of 256");
    assert!(
        data_sockets(bench.dir()).is_empty(),
        "a refused request left data sockets: {:?}\n{}",
        data_sockets(bench.dir()),
        bench.logs()
    );
    bench.assert_alive();

    let mut plug = bench.attach_plug("");
    let client = bench.attach_daemon_client();
    bench.assert_plug_and_client_talk(&mut plug, 1, &client, 2, 400);
    bench.assert_alive();
}

#[test]
fn last_port_is_in_range_and_max_ports_is_not() {
    if only_ours("closing the control connection on an out-of-range port") {
        return;
    }
    let mut bench = Bench::ours(&["--max-ports", "8"]);
    let mut bad = VdePlug::spawn(&bench.url("[8]")).expect("spawn vde_plug");
    assert_plug_refused_fast(&bench, &mut bad, "port 8 of 8");
    let mut plug = bench.attach_plug("[7]");
    bench.wait_port_connected_line(7);
    let client = bench.attach_daemon_client();
    bench.assert_plug_and_client_talk(&mut plug, 1, &client, 2, 450);
    bench.assert_alive();
}

#[test]
fn vde_plugs_asking_for_one_port_share_it() {
    let bench = Bench::start();
    let mut p1 = bench.attach_plug("[5]");
    let mut p2 = bench.attach_plug("[5]");
    if which() == Impl::Ours {
        let logs = bench.logs();
        assert_eq!(
            logs.matches("port 5 connected").count(),
            2,
            "both vde_plugs should be on port 5\n{logs}"
        );
    }
    let client = bench.attach_daemon_client();
    // A broadcast from the rest of the switch reaches both sharers.
    let hello = tagged_frame(BROADCAST, mac(3), 500);
    client.send_frame(&hello).expect("daemon client sends");
    bench.plug_expects(&p1, &hello, "first sharer of port 5");
    bench.plug_expects(&p2, &hello, "second sharer of port 5");
    // A frame from one sharer reaches the rest, not the other sharer.
    let from_p1 = tagged_frame(BROADCAST, mac(1), 501);
    p1.send_frame(&from_p1).expect("write to vde_plug");
    bench.client_expects(&client, &from_p1, "broadcast from a sharer");
    if let Some(frame) = p2.recv_frame(SILENCE) {
        panic!(
            "the other sharer of port 5 heard a frame ({} bytes, head {:02x?})\n{}",
            frame.len(),
            &frame[..frame.len().min(20)],
            bench.logs()
        );
    }
    // One sharer leaving keeps the port for the other.
    p1.stop();
    let again = tagged_frame(BROADCAST, mac(3), 502);
    client.send_frame(&again).expect("daemon client sends");
    bench.plug_expects(&p2, &again, "remaining sharer of port 5");
    let back = tagged_frame(mac(3), mac(2), 503);
    p2.send_frame(&back).expect("write to vde_plug");
    bench.client_expects(&client, &back, "unicast from the remaining sharer");
}

#[test]
fn another_users_port_is_refused_fast_and_the_owner_keeps_it() {
    if only_ours("closing the control connection at once (vde_switch 2.3.2 leaves it hanging)") {
        return;
    }
    // Everything readable and writable by everybody, so that only the
    // port's owner stands between user nobody and port 5.
    let mut bench = Bench::start_open();
    let mut owner = bench.attach_plug("[5]");
    let mut intruder =
        VdePlug::spawn_as(&bench.url("[5]"), NOBODY, NOGROUP).expect("spawn vde_plug as nobody");
    assert_plug_refused_fast(&bench, &mut intruder, "port 5 belongs to root");
    assert_eq!(
        data_sockets(bench.dir()).len(),
        1,
        "the refused request changed the data sockets: {:?}\n{}",
        data_sockets(bench.dir()),
        bench.logs()
    );
    bench.assert_alive();

    // nobody may have a port of its own, and talk to root's.
    let before = data_sockets(bench.dir()).len();
    let mut own =
        VdePlug::spawn_as(&bench.url("[6]"), NOBODY, NOGROUP).expect("spawn vde_plug as nobody");
    if wait_for_data_sockets(bench.dir(), before + 1, ATTACH_TIMEOUT).is_none() {
        panic!(
            "vde_plug as nobody could not attach to port 6 ({:?})\n--- vde_plug stderr ---\n{}\n{}",
            own.try_status(),
            own.stderr(),
            bench.logs()
        );
    }
    let hello = tagged_frame(BROADCAST, mac(6), 510);
    own.send_frame(&hello).expect("write to vde_plug");
    bench.plug_expects(&owner, &hello, "port 5's owner");
    let back = tagged_frame(mac(6), mac(5), 511);
    owner.send_frame(&back).expect("write to vde_plug");
    bench.plug_expects(&own, &back, "nobody's vde_plug on port 6");
}

#[test]
fn data_socket_is_removed_when_vde_plug_exits() {
    let bench = Bench::start();
    let mut plug = bench.attach_plug("");
    let sockets = data_sockets(bench.dir());
    assert_eq!(
        sockets.len(),
        1,
        "one data socket per client\n{}",
        bench.logs()
    );
    println!("vde_plug's data socket: {}", sockets[0].display());
    // Closing its stdin makes vde_plug exit, which hangs up the control
    // connection.
    plug.close_stdin();
    if plug.wait_exit(EXIT_TIMEOUT).is_none() {
        panic!("vde_plug did not exit when its stdin closed");
    }
    assert_data_sockets_vanish(&bench, "after vde_plug exited");
    assert!(bench.ctl().exists(), "ctl vanished\n{}", bench.logs());

    // And the same for a killed vde_plug.
    let mut plug = bench.attach_plug("");
    plug.kill();
    assert_data_sockets_vanish(&bench, "after vde_plug was stopped");
}

#[test]
fn sigterm_removes_ctl_data_sockets_and_the_directory() {
    let mut bench = Bench::start();
    let mut plug = bench.attach_plug("");
    let client = bench.attach_daemon_client();
    bench.assert_plug_and_client_talk(&mut plug, 1, &client, 2, 600);
    let status = bench.terminate();
    if which() == Impl::Ours {
        assert_eq!(status.code(), Some(0), "{status}\n{}", bench.logs());
    }
    let dir = bench.dir().to_owned();
    let leftovers: Vec<String> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !dir.join("ctl").exists() && leftovers.is_empty(),
        "files left in {} after SIGTERM: {leftovers:?}\n{}",
        dir.display(),
        bench.logs()
    );
    assert!(
        !dir.exists(),
        "the switch created {} and must remove it on exit\n{}",
        dir.display(),
        bench.logs()
    );
    // vde_plug notices that the switch hung up.
    if plug.wait_exit(FAIL_FAST).is_none() {
        panic!("vde_plug still running {FAIL_FAST:?} after the switch exited");
    }
}

#[test]
fn sigterm_keeps_a_directory_the_switch_did_not_create() {
    if only_ours("keeping a pre-existing directory") {
        return;
    }
    require_vde_plug();
    let scratch = tempfile::Builder::new()
        .prefix("vde-compat.")
        .tempdir()
        .expect("scratch dir");
    let dir = scratch.path().join("vde");
    fs::create_dir(&dir).expect("create DIR");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod DIR");
    let mut switch = SwitchProcess::spawn_vde(&dir, &[]).expect("spawn the switch");
    if let Err(err) = switch.wait_ready(EXIT_TIMEOUT) {
        panic!("switch did not become ready: {err}\n{}", switch.logs());
    }
    {
        let _plug = VdePlug::spawn(&dir.display().to_string()).expect("spawn vde_plug");
        wait_for_data_sockets(&dir, 1, ATTACH_TIMEOUT)
            .unwrap_or_else(|| panic!("vde_plug did not attach\n{}", switch.logs()));
    }
    let status = switch
        .terminate(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("switch ignored SIGTERM\n{}", switch.logs()));
    assert_eq!(status.code(), Some(0), "{status}\n{}", switch.logs());
    assert!(
        dir.is_dir(),
        "the switch removed a directory it did not create"
    );
    let left: Vec<_> = fs::read_dir(&dir)
        .expect("read DIR")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "files left after SIGTERM: {left:?}\n{}",
        switch.logs()
    );
}

/// Mode checks of data sockets use daemon clients: libvdeplug chmods the
/// switch's data socket itself once connected (`chmod(path, mode)`, mode
/// 0700 unless `vde_plug -m`), which succeeds when it runs as the socket's
/// owner or root, so after a `vde_plug` attaches the mode is vde_plug's.
fn daemon_client_data_socket(bench: &Bench) -> (Client, PathBuf) {
    let client = bench.attach_daemon_client();
    let path = match client.switch_addr() {
        DataAddr::Pathname(path) => path.clone(),
        DataAddr::Abstract(_) => panic!(
            "in --vde-dir mode the data socket must be a file in DIR, got an abstract address\n{}",
            bench.logs()
        ),
    };
    assert_eq!(
        path.parent(),
        Some(bench.dir()),
        "data socket {} is not in DIR\n{}",
        path.display(),
        bench.logs()
    );
    (client, path)
}

#[test]
fn default_modes_are_0700_for_the_directory_and_0600_for_sockets() {
    if only_ours("modes 0700/0600 (vde_switch uses 02700 and 0700 data sockets)") {
        return;
    }
    let bench = Bench::start();
    let (_client, data) = daemon_client_data_socket(&bench);
    assert_eq!(mode_of(bench.dir()), 0o700, "mode of DIR\n{}", bench.logs());
    assert_eq!(
        mode_of(&bench.ctl()),
        0o600,
        "mode of DIR/ctl\n{}",
        bench.logs()
    );
    assert_eq!(
        mode_of(&data),
        0o600,
        "mode of data socket {}\n{}",
        data.display(),
        bench.logs()
    );
}

#[test]
fn mode_0660_applies_to_ctl_and_data_sockets() {
    if only_ours("--mode") {
        return;
    }
    let bench = Bench::ours(&["--mode", "0660"]);
    let (_client, data) = daemon_client_data_socket(&bench);
    println!("mode of DIR with --mode 0660: {:04o}", mode_of(bench.dir()));
    assert_eq!(
        mode_of(&bench.ctl()),
        0o660,
        "mode of DIR/ctl\n{}",
        bench.logs()
    );
    assert_eq!(
        mode_of(&data),
        0o660,
        "mode of data socket {}\n{}",
        data.display(),
        bench.logs()
    );
    // A group member must be able to reach the sockets in DIR.
    assert_eq!(
        mode_of(bench.dir()) & 0o070,
        0o070,
        "DIR must be open to the group with --mode 0660 (mode {:04o})\n{}",
        mode_of(bench.dir()),
        bench.logs()
    );
    // vde_plug attaches, and as root its chmod of its data socket to its own
    // `-m` mode succeeds.
    let _plug = bench.attach_plug("");
    let sockets = data_sockets(bench.dir());
    assert_eq!(sockets.len(), 2, "{sockets:?}\n{}", bench.logs());
}

#[test]
fn group_applies_to_ctl_and_data_sockets() {
    if only_ours("--group") {
        return;
    }
    // `daemon` (gid 1) exists on every Debian system.
    let bench = Bench::ours(&["--mode", "0660", "--group", "daemon"]);
    let (_client, data) = daemon_client_data_socket(&bench);
    let _plug = bench.attach_plug("");
    // DIR too: group members reach the sockets through it.
    let paths = [bench.dir().to_owned(), bench.ctl(), data];
    for path in paths.into_iter().chain(data_sockets(bench.dir())) {
        let gid = fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .gid();
        assert_eq!(gid, 1, "group of {}\n{}", path.display(), bench.logs());
    }
}

#[test]
fn a_symlink_at_the_directory_path_is_refused() {
    if only_ours("refusing a symlinked directory") {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("vde-compat.")
        .tempdir()
        .expect("scratch dir");
    let target = scratch.path().join("elsewhere");
    fs::create_dir(&target).expect("create the symlink's target");
    for (name, points_to) in [
        ("to-dir", target.clone()),
        ("dangling", scratch.path().join("missing")),
    ] {
        let link = scratch.path().join(name);
        std::os::unix::fs::symlink(&points_to, &link).expect("plant the symlink");
        let mut switch = SwitchProcess::spawn_vde(&link, &[]).expect("spawn the switch");
        let status = switch.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "switch on a symlinked DIR ({name}) still running\n{}",
                switch.logs()
            )
        });
        assert!(
            !status.success(),
            "switch on a symlinked DIR ({name}) exited {status}\n{}",
            switch.logs()
        );
        assert!(
            switch.stderr_log().to_lowercase().contains("symlink")
                || switch.stderr_log().to_lowercase().contains("symbolic link"),
            "the error for a symlinked DIR ({name}) does not mention the symlink\n{}",
            switch.logs()
        );
        assert!(
            !points_to.join("ctl").exists(),
            "the switch followed the symlink ({name})"
        );
        assert!(
            fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
            "the symlink ({name}) was touched"
        );
    }
}
