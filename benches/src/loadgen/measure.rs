//! The two measurements: throughput (P sender/receiver pairs blasting
//! unicast frames through the target) and ping-pong latency.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::client::{self, Port, BROADCAST, RECV_LEN};
use super::sys::{self, RecvBuffers};
use super::target::{Kind, Target};

/// How long senders run before the measurement window opens.
const RAMP: Duration = Duration::from_millis(300);
/// How long receivers keep draining after the senders stop.
const TAIL: Duration = Duration::from_millis(100);
/// Bound on every blocking socket call, so stop flags are seen promptly.
const IO_TIMEOUT: Duration = Duration::from_millis(50);
/// Time the switch gets to learn the warm-up broadcasts.
const LEARN_WAIT: Duration = Duration::from_millis(50);
/// Datagrams per recvmmsg call.
const RECV_BATCH: usize = 32;

/// Parameters of a throughput measurement.
#[derive(Clone, Copy, Debug)]
pub struct ThroughputParams {
    /// Ports (2 per sender/receiver pair).
    pub ports: usize,
    /// Frame size in bytes (Ethernet header included, no FCS).
    pub size: usize,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Frames per sendmmsg call (1 = plain sendto).
    pub batch: usize,
    /// Total offered load in frames/s, split evenly over the senders
    /// (None = as fast as the sockets take them).
    pub rate: Option<f64>,
}

/// Result of one throughput measurement.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Frames sent in the window, per second (offered load).
    pub offered_fps: f64,
    /// Frames received in the window, per second.
    pub rx_fps: f64,
    /// Received bit rate, frame bytes * 8, in Mbit/s.
    pub rx_mbps: f64,
    /// Frames lost over the whole run (sent - received) in percent of sent.
    pub loss_pct: f64,
    /// Switch CPU seconds (user+system) per million frames received.
    pub cpu_s_per_mframe: Option<f64>,
    /// Switch CPU utilisation in the window (1.0 = one core).
    pub cpu_util: Option<f64>,
    /// Frames received that were not addressed to the receiver (floods).
    pub stray: u64,
    /// Whole-run totals.
    pub sent_total: u64,
    /// Whole-run totals.
    pub rx_total: u64,
    /// Whether the pre-check saw every unicast reach only its receiver.
    pub learned: bool,
}

/// Result of one ping-pong measurement.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// Round-trip percentiles in microseconds.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Round trips completed.
    pub count: usize,
    /// Pings with no answer within the timeout.
    pub lost: usize,
}

/// A counter on its own cache line.
#[repr(align(64))]
#[derive(Default)]
struct Counter(AtomicU64);

/// Creates `n` ports on `target`, with MACs from `macs`.
fn make_ports(target: &Target, macs: &[[u8; 6]]) -> io::Result<Vec<Port>> {
    macs.iter()
        .map(|&mac| match target.ctl() {
            Some(ctl) => Port::attach(mac, ctl),
            None => Port::bind(mac),
        })
        .collect()
}

/// Lets the switch learn every port's MAC (one broadcast each), then drains
/// what the broadcasts delivered. No-op for direct.
fn learn(target: &Target, ports: &[Port]) -> io::Result<()> {
    if target.kind == Kind::Direct {
        return Ok(());
    }
    for p in ports {
        p.send(&client::frame(BROADCAST, p.mac, 64))?;
    }
    thread::sleep(LEARN_WAIT);
    // A switch with per-port backlogs delivers the broadcasts that did not
    // fit in a receiver's 10-datagram queue as it drains: drain until quiet
    // (bounded), so that no broadcast is taken for a stray unicast later.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut drained = 0;
        for p in ports {
            drained += p.drain()?;
        }
        if drained == 0 || Instant::now() >= deadline {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one unicast per (sender, receiver) pair and checks that it reaches
/// its receiver and nobody else (i.e. learning worked). Bounded by ~1 s.
fn check_unicast(pairs: &[(&Port, &Port)], all: &[Port]) -> io::Result<bool> {
    for (s, r) in pairs {
        s.send(&client::frame(r.mac, s.mac, 64))?;
    }
    let mut ok = true;
    let mut buf = [0u8; RECV_LEN];
    for (_, r) in pairs {
        match r.recv_timeout(&mut buf, Duration::from_millis(500))? {
            Some(n) if n >= 14 && buf[..6] == r.mac => {}
            _ => ok = false,
        }
    }
    thread::sleep(Duration::from_millis(10));
    for p in all {
        if p.drain()? > 0 {
            ok = false;
        }
    }
    Ok(ok)
}

/// One throughput measurement against a freshly started `target`.
pub fn throughput(target: &mut Target, params: ThroughputParams) -> io::Result<Throughput> {
    let pairs = (params.ports / 2).max(1);
    let mut macs = Vec::with_capacity(pairs * 2);
    for i in 0..pairs {
        macs.push(client::mac(1, i as u8));
        macs.push(client::mac(2, i as u8));
    }
    let mut ports = make_ports(target, &macs)?;
    if target.kind == Kind::Direct {
        for i in 0..pairs {
            ports[2 * i].dest = ports[2 * i + 1].addr;
            ports[2 * i + 1].dest = ports[2 * i].addr;
        }
    }
    learn(target, &ports)?;
    let learned = {
        let pair_refs: Vec<(&Port, &Port)> = (0..pairs)
            .map(|i| (&ports[2 * i], &ports[2 * i + 1]))
            .collect();
        check_unicast(&pair_refs, &ports)?
    };
    for p in &ports {
        p.data.set_read_timeout(Some(IO_TIMEOUT))?;
        p.data.set_write_timeout(Some(IO_TIMEOUT))?;
    }

    let sent: Arc<Vec<Counter>> = Arc::new((0..pairs).map(|_| Counter::default()).collect());
    let received: Arc<Vec<Counter>> = Arc::new((0..pairs).map(|_| Counter::default()).collect());
    let stray = Arc::new(AtomicU64::new(0));
    let stop_senders = Arc::new(AtomicBool::new(false));
    let stop_receivers = Arc::new(AtomicBool::new(false));

    // Split the ports into sender and receiver halves, moved into threads.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut drained = ports.into_iter();
    for i in 0..pairs {
        let s = drained.next().expect("sender port");
        let r = drained.next().expect("receiver port");
        let frame = client::frame(r.mac, s.mac, params.size);
        {
            let received = Arc::clone(&received);
            let stray = Arc::clone(&stray);
            let stop = Arc::clone(&stop_receivers);
            receivers.push(
                thread::Builder::new()
                    .name(format!("rx{i}"))
                    .spawn(move || receive_loop(&r, &received[i].0, &stray, &stop))?,
            );
        }
        {
            let sent = Arc::clone(&sent);
            let stop = Arc::clone(&stop_senders);
            let batch = params.batch;
            let rate = params.rate.map(|r| r / pairs as f64);
            senders.push(
                thread::Builder::new()
                    .name(format!("tx{i}"))
                    .spawn(move || send_loop(&s, &frame, batch, rate, &sent[i].0, &stop))?,
            );
        }
    }

    let total = |c: &[Counter]| -> u64 { c.iter().map(|x| x.0.load(Ordering::Relaxed)).sum() };
    thread::sleep(RAMP);
    let (tx0, rx0, cpu0, t0) = (
        total(&sent),
        total(&received),
        target.cpu_seconds(),
        Instant::now(),
    );
    thread::sleep(params.duration);
    let (tx1, rx1, cpu1, elapsed) = (
        total(&sent),
        total(&received),
        target.cpu_seconds(),
        t0.elapsed(),
    );
    stop_senders.store(true, Ordering::Relaxed);
    let mut first_err: Option<io::Error> = None;
    for h in senders {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some(io::Error::other("sender thread panicked"))),
        }
    }
    thread::sleep(TAIL);
    stop_receivers.store(true, Ordering::Relaxed);
    for h in receivers {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some(io::Error::other("receiver thread panicked"))),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if target.has_exited() {
        return Err(io::Error::other(format!(
            "{} died during the measurement; log:\n{}",
            target.kind,
            target.log_tail()
        )));
    }
    let secs = elapsed.as_secs_f64();
    let (sent_total, rx_total) = (total(&sent), total(&received));
    let rx = (rx1 - rx0) as f64;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Throughput {
        offered_fps: (tx1 - tx0) as f64 / secs,
        rx_fps: rx / secs,
        rx_mbps: rx * params.size as f64 * 8.0 / secs / 1e6,
        loss_pct: if sent_total > 0 {
            100.0 * sent_total.saturating_sub(rx_total) as f64 / sent_total as f64
        } else {
            0.0
        },
        cpu_s_per_mframe: cpu.filter(|_| rx > 0.0).map(|c| c / rx * 1e6),
        cpu_util: cpu.map(|c| c / secs),
        stray: stray.load(Ordering::Relaxed),
        sent_total,
        rx_total,
        learned,
    })
}

/// A sender: the same frame as fast as the socket takes it, blocking sends
/// (natural backpressure), `batch` frames per sendmmsg; or paced at `rate`
/// frames/s (sleeping between batches).
fn send_loop(
    port: &Port,
    frame: &[u8],
    batch: usize,
    rate: Option<f64>,
    sent: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    let frames: Vec<&[u8]> = vec![frame; batch.clamp(1, sys::MAX_BATCH)];
    let start = Instant::now();
    let mut total: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(total as f64 / rate);
            let now = Instant::now();
            if due > now {
                thread::sleep((due - now).min(IO_TIMEOUT));
                continue;
            }
        }
        let result = if frames.len() == 1 {
            sys::send_to(&port.data, frame, &port.dest).map(|_| 1)
        } else {
            sys::send_batch(&port.data, &frames, &port.dest)
        };
        match result {
            Ok(n) => {
                total += n as u64;
                sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if sys::is_transient(&e) => {}
            // The switch dropping its socket shows up as ECONNREFUSED: the
            // caller notices the dead switch.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A receiver: blocking recvmmsg (MSG_WAITFORONE, bounded by SO_RCVTIMEO)
/// in a tight loop, counting frames addressed to it.
fn receive_loop(
    port: &Port,
    received: &AtomicU64,
    stray: &AtomicU64,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut bufs = RecvBuffers::new(RECV_BATCH, RECV_LEN);
    while !stop.load(Ordering::Relaxed) {
        match sys::recv_batch(&port.data, &mut bufs, libc::MSG_WAITFORONE) {
            Ok(n) => {
                let mine = (0..n)
                    .filter(|&i| bufs.get(i).get(..6) == Some(&port.mac[..]))
                    .count();
                received.fetch_add(mine as u64, Ordering::Relaxed);
                if mine < n {
                    stray.fetch_add((n - mine) as u64, Ordering::Relaxed);
                }
            }
            Err(e) if sys::is_transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ping-pong: A sends a frame to B's MAC, B echoes it back to A's MAC, A
/// times the round trip; `warmup` unrecorded round trips first, then `count`.
pub fn latency(target: &mut Target, warmup: usize, count: usize) -> io::Result<Latency> {
    let macs = [client::mac(3, 0), client::mac(3, 1)];
    let mut ports = make_ports(target, &macs)?;
    if target.kind == Kind::Direct {
        ports[0].dest = ports[1].addr;
        ports[1].dest = ports[0].addr;
    }
    learn(target, &ports)?;
    let b = ports.pop().expect("port B");
    let a = ports.pop().expect("port A");
    b.data.set_read_timeout(Some(IO_TIMEOUT))?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        let a_mac = a.mac;
        thread::Builder::new()
            .name("echo".into())
            .spawn(move || -> io::Result<()> {
                let mut buf = [0u8; RECV_LEN];
                while !stop.load(Ordering::Relaxed) {
                    match b.data.recv(&mut buf) {
                        Ok(n) if n >= 14 && buf[..6] == b.mac => {
                            buf[..6].copy_from_slice(&a_mac);
                            buf[6..12].copy_from_slice(&b.mac);
                            b.send(&buf[..n])?;
                        }
                        Ok(_) => {}
                        Err(e) if sys::is_transient(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })?
    };
    let result = ping_loop(&a, macs[1], warmup, count);
    stop.store(true, Ordering::Relaxed);
    let echo_result = echo
        .join()
        .map_err(|_| io::Error::other("echo thread panicked"))?;
    let (mut rtts, lost) = result?;
    echo_result?;
    if rtts.is_empty() {
        return Err(io::Error::other("no round trip completed"));
    }
    rtts.sort_by(f64::total_cmp);
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    Ok(Latency {
        p50_us: percentile(&rtts, 0.50),
        p90_us: percentile(&rtts, 0.90),
        p99_us: percentile(&rtts, 0.99),
        mean_us: mean,
        count: rtts.len(),
        lost,
    })
}

/// A's side of the ping-pong: returns the round trips (us) and losses.
fn ping_loop(
    a: &Port,
    b_mac: [u8; 6],
    warmup: usize,
    count: usize,
) -> io::Result<(Vec<f64>, usize)> {
    let mut frame = client::frame(b_mac, a.mac, 64);
    let mut buf = [0u8; RECV_LEN];
    let mut rtts = Vec::with_capacity(count);
    let mut lost = 0;
    let timeout = Duration::from_millis(100);
    a.data.set_read_timeout(Some(timeout))?;
    for seq in 0..(warmup + count) as u64 {
        frame[14..22].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        a.send(&frame)?;
        let got = loop {
            match a.data.recv(&mut buf) {
                Ok(n) if n >= 22 && buf[..6] == a.mac && buf[14..22] == seq.to_le_bytes() => {
                    break Some(t0.elapsed());
                }
                Ok(_) => {} // a stale echo
                Err(e) if sys::is_transient(&e) => {
                    if t0.elapsed() >= timeout {
                        break None;
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if seq as usize >= warmup {
            match got {
                Some(rtt) => rtts.push(rtt.as_secs_f64() * 1e6),
                None => lost += 1,
            }
        }
        if lost > 100 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "more than 100 pings lost",
            ));
        }
    }
    Ok((rtts, lost))
}

/// The `q` quantile of sorted `v` (nearest rank).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Median of unsorted values (NaN if empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
