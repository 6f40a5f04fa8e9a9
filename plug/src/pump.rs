//! Moves frames both ways between two open endpoints, through each
//! direction's link model.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use uml_switch_proto::{Fate, Impair, ImpairConfig, Timestamp, MAX_FRAME_LEN};

use crate::endpoint::{End, FrameRx, FrameTx, Opened};
use crate::error::PlugError;

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Frames received from the source.
    pub frames_in: AtomicU64,
    /// Bytes received from the source.
    pub bytes_in: AtomicU64,
    /// Frames handed to the destination (duplicates included).
    pub frames_out: AtomicU64,
    /// Frames the link model dropped (loss, MTU, queue full).
    pub dropped: AtomicU64,
    /// Frames the link model duplicated.
    pub duplicated: AtomicU64,
    /// Frames the link model corrupted.
    pub corrupted: AtomicU64,
}

impl DirectionStats {
    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} frames ({} bytes) in, {} out, {} dropped, {} duplicated, {} corrupted",
            get(&self.frames_in),
            get(&self.bytes_in),
            get(&self.frames_out),
            get(&self.dropped),
            get(&self.duplicated),
            get(&self.corrupted)
        )
    }
}

/// A frame waiting for its time to be sent.
struct Scheduled {
    at: Timestamp,
    /// Arrival order, so that equal times keep their order.
    seq: u64,
    frame: Vec<u8>,
    copies: u8,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Starts both directions between `a` and `b`; each direction gets its own
/// link model (`configs`: a → b, then b → a), seeded from `seed`
/// differently per direction. Whatever ends first is reported on `ender`. Returns the
/// counters of (a → b, b → a).
pub fn start(
    a: Opened,
    b: Opened,
    configs: &(ImpairConfig, ImpairConfig),
    seed: u64,
    ender: &Sender<End>,
) -> (Arc<DirectionStats>, Arc<DirectionStats>) {
    let epoch = Instant::now();
    let Opened {
        name: a_name,
        rx: a_rx,
        tx: a_tx,
    } = a;
    let Opened {
        name: b_name,
        rx: b_rx,
        tx: b_tx,
    } = b;
    let forward = direction(
        format!("{a_name} -> {b_name}"),
        (a_name.clone(), a_rx),
        (b_name.clone(), b_tx),
        &configs.0,
        seed,
        epoch,
        ender,
    );
    let backward = direction(
        format!("{b_name} -> {a_name}"),
        (b_name, b_rx),
        (a_name, a_tx),
        &configs.1,
        seed ^ 0x9e37_79b9_7f4a_7c15,
        epoch,
        ender,
    );
    (forward, backward)
}

type Half<T> = (String, Box<T>);

fn direction(
    label: String,
    (src_name, mut rx): Half<dyn FrameRx>,
    (dst_name, tx): Half<dyn FrameTx>,
    config: &ImpairConfig,
    seed: u64,
    epoch: Instant,
    ender: &Sender<End>,
) -> Arc<DirectionStats> {
    let stats = Arc::new(DirectionStats::default());
    let tx = Arc::new(Mutex::new(tx));
    let transparent = config.is_transparent();
    let mut impair = Impair::new(config.clone(), seed);
    let scheduled = (!transparent).then(|| {
        let (queue, waiting) = mpsc::sync_channel::<Scheduled>(4096);
        spawn_scheduler(
            waiting,
            tx.clone(),
            dst_name.clone(),
            stats.clone(),
            epoch,
            ender.clone(),
        );
        queue
    });
    let (stats_in, ender) = (stats.clone(), ender.clone());
    thread::Builder::new()
        .name(label)
        .spawn(move || {
            let mut buf = vec![0u8; MAX_FRAME_LEN + 1];
            let mut seq = 0u64;
            let result = loop {
                let len = match rx.recv(&mut buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break Ok(format!("{src_name} ended")),
                    Err(source) => {
                        break Err(PlugError::Io {
                            endpoint: src_name.clone(),
                            source,
                        })
                    }
                };
                DirectionStats::bump(&stats_in.frames_in, 1);
                DirectionStats::bump(&stats_in.bytes_in, len as u64);
                let frame = &buf[..len];
                let Some(queue) = &scheduled else {
                    if let Err(source) = send(&tx, frame) {
                        break Err(PlugError::Io {
                            endpoint: dst_name.clone(),
                            source,
                        });
                    }
                    DirectionStats::bump(&stats_in.frames_out, 1);
                    continue;
                };
                let now = Timestamp::from_duration(epoch.elapsed());
                match impair.decide(now, len) {
                    Fate::Drop(_) => DirectionStats::bump(&stats_in.dropped, 1),
                    Fate::Deliver {
                        at,
                        copies,
                        corrupt,
                    } => {
                        let mut frame = frame.to_vec();
                        if let Some((index, mask)) = corrupt {
                            frame[index] ^= mask;
                            DirectionStats::bump(&stats_in.corrupted, 1);
                        }
                        if copies > 1 {
                            DirectionStats::bump(&stats_in.duplicated, u64::from(copies - 1));
                        }
                        seq += 1;
                        let item = Scheduled {
                            at,
                            seq,
                            frame,
                            copies,
                        };
                        if queue.try_send(item).is_err() {
                            DirectionStats::bump(&stats_in.dropped, 1);
                        }
                    }
                }
            };
            let _ = ender.send(End { result });
        })
        .expect("start a direction thread");
    stats
}

fn send(tx: &Mutex<Box<dyn FrameTx>>, frame: &[u8]) -> std::io::Result<()> {
    tx.lock().unwrap_or_else(|e| e.into_inner()).send(frame)
}

/// Sends delayed frames when they are due, earliest first.
fn spawn_scheduler(
    waiting: Receiver<Scheduled>,
    tx: Arc<Mutex<Box<dyn FrameTx>>>,
    dst_name: String,
    stats: Arc<DirectionStats>,
    epoch: Instant,
    ender: Sender<End>,
) {
    thread::spawn(move || {
        let mut due: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
        loop {
            let now = epoch.elapsed();
            while due
                .peek()
                .is_some_and(|Reverse(s)| s.at.as_duration() <= now)
            {
                let Some(Reverse(item)) = due.pop() else {
                    break;
                };
                for _ in 0..item.copies {
                    if let Err(source) = send(&tx, &item.frame) {
                        let _ = ender.send(End {
                            result: Err(PlugError::Io {
                                endpoint: dst_name,
                                source,
                            }),
                        });
                        return;
                    }
                    DirectionStats::bump(&stats.frames_out, 1);
                }
            }
            let wait = due
                .peek()
                .map(|Reverse(s)| s.at.as_duration().saturating_sub(epoch.elapsed()))
                .unwrap_or(Duration::from_secs(3600));
            match waiting.recv_timeout(wait) {
                Ok(item) => due.push(Reverse(item)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if due.is_empty() => return,
                Err(RecvTimeoutError::Disconnected) => {
                    thread::sleep(wait.min(Duration::from_millis(10)));
                }
            }
        }
    });
}
