//! The data plane: one or more worker threads that move frames.
//!
//! Every port is *owned* by one worker (port number modulo the number of
//! workers), which alone reads it; any worker may send to any port, so a
//! frame crosses the switch in the thread that received it. Each worker
//! keeps its own replica of the forwarding core ([`Switch`]); what one
//! replica learns from its ports reaches the others as batches of
//! [`Announcement`]s through channels, never through a lock.
//!
//! Each turn of a worker's loop:
//! 1. waits (epoll, through mio) until one of its ports is readable or a
//!    message arrives;
//! 2. applies messages (ports added or removed, what peers learned) while
//!    no frame is in flight;
//! 3. receives a batch from each readable port (`recvmmsg` for sockets)
//!    into a fixed arena of frame slots and runs [`Switch::ingress`] over
//!    it, queueing slot numbers on the destination ports;
//! 4. flushes every destination's queue with one `sendmmsg` (non-blocking:
//!    a full client loses the frames it cannot take, counted, and nobody
//!    waits).
//!
//! Ports that still had data after their batch are visited again on the
//! next turn without sleeping, so one busy port cannot starve the others.
//! Nothing on this path allocates or takes a lock.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use uml_switch_proto::wire::SockaddrUn;
use uml_switch_proto::{
    Announcement, DropReason, PortId, PortNumbers, PortStats, Switch, SwitchConfig, SwitchError,
    Timestamp, Verdict, MAX_FRAME_LEN,
};

use crate::sys::{RecvBatch, SendBatch};

/// Bytes per frame slot: one more than the largest frame, so that a longer
/// datagram shows up as oversize instead of silently fitting.
const SLOT_LEN: usize = (MAX_FRAME_LEN + 1).next_multiple_of(64);
/// Frame slots in a worker's arena: the most frames in flight in one turn.
const ARENA_SLOTS: usize = 256;
/// The most frames taken from one port per turn.
const RX_BATCH: usize = 64;
/// The most frames handed to the kernel per `sendmmsg`.
const TX_BATCH: usize = 64;
/// How often aged-out forwarding entries are reclaimed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

const WAKER: Token = Token(usize::MAX);

/// How a port moves frames.
pub enum PortIo {
    /// A datagram socket connected to its client (UML's daemon transport).
    /// `client` is the address the client sent; frames from any other
    /// source are dropped.
    Datagram {
        socket: UnixDatagram,
        client: SockaddrUn,
    },
    /// A host tap interface.
    Tap(tun_tap::Iface),
}

impl PortIo {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            PortIo::Datagram { socket, .. } => socket.as_fd(),
            PortIo::Tap(iface) => crate::sys::borrow_fd(iface),
        }
    }
}

/// What a port is, for logs and listings.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// The transport: "daemon" or "tap".
    pub transport: &'static str,
    /// Who is on the other end: a client address or an interface name.
    pub peer: String,
    /// The client's description, if it sent one.
    pub description: String,
}

/// Why the data plane did not add a port.
#[derive(Debug, thiserror::Error)]
pub enum AddPortError {
    /// The number is out of range or taken, or none is free.
    #[error(transparent)]
    Number(SwitchError),
    /// epoll would not watch the port's descriptor.
    #[error("cannot watch its descriptor: {0}")]
    Watch(io::Error),
}

/// Messages to a worker.
enum WorkerMsg {
    /// Attach a port; `reply` is given to its owner only.
    AddPort {
        id: PortId,
        io: Arc<PortIo>,
        info: PortInfo,
        reply: Option<oneshot::Sender<io::Result<()>>>,
    },
    /// Detach a port and send back this worker's counters of it.
    RemovePort {
        id: PortId,
        reply: oneshot::Sender<PortStats>,
    },
    /// What another worker's replica learned.
    Learned(Vec<Announcement>),
    /// Send back this worker's counters of every port.
    Snapshot {
        reply: oneshot::Sender<Vec<(PortId, PortInfo, PortStats)>>,
    },
    /// Stop the thread.
    Shutdown,
}

/// A way to reach one worker: its channel and the waker of its epoll.
#[derive(Clone)]
struct WorkerLink {
    tx: mpsc::Sender<WorkerMsg>,
    waker: Arc<Waker>,
}

impl WorkerLink {
    fn send(&self, msg: WorkerMsg) -> io::Result<()> {
        self.tx.send(msg).map_err(|_| stopped())?;
        self.waker.wake()
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the data plane has stopped")
}

/// The control plane's end of the data plane.
#[derive(Clone)]
pub struct DataplaneHandle {
    workers: Vec<WorkerLink>,
    numbers: Arc<Mutex<PortNumbers>>,
}

impl DataplaneHandle {
    /// Attaches a port as `wanted` (or the first free number) and returns
    /// its number once its owner watches it.
    pub async fn add_port(
        &self,
        wanted: Option<PortId>,
        io: PortIo,
        info: PortInfo,
    ) -> io::Result<Result<PortId, AddPortError>> {
        let claimed = self.lock_numbers().claim(wanted);
        let id = match claimed {
            Ok(id) => id,
            Err(e) => return Ok(Err(AddPortError::Number(e))),
        };
        let io = Arc::new(io);
        let owner = id.index() % self.workers.len();
        let (reply, registered) = oneshot::channel();
        let mut reply = Some(reply);
        for (w, worker) in self.workers.iter().enumerate() {
            worker.send(WorkerMsg::AddPort {
                id,
                io: io.clone(),
                info: info.clone(),
                reply: if w == owner { reply.take() } else { None },
            })?;
        }
        match registered.await.map_err(|_| stopped())? {
            Ok(()) => Ok(Ok(id)),
            Err(e) => {
                self.remove_port(id).await?;
                Ok(Err(AddPortError::Watch(e)))
            }
        }
    }

    /// Detaches a port; returns its final counters.
    pub async fn remove_port(&self, id: PortId) -> io::Result<PortStats> {
        let mut answers = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (reply, answer) = oneshot::channel();
            worker.send(WorkerMsg::RemovePort { id, reply })?;
            answers.push(answer);
        }
        // Each worker handles its messages in order, so the number can be
        // reused at once: a later AddPort reaches every worker after this.
        self.lock_numbers().release(id);
        let mut total = PortStats::default();
        for answer in answers {
            total.merge(&answer.await.map_err(|_| stopped())?);
        }
        Ok(total)
    }

    /// The counters of every port, summed over the workers.
    pub async fn snapshot(&self) -> io::Result<Vec<(PortId, PortInfo, PortStats)>> {
        let mut merged: Vec<(PortId, PortInfo, PortStats)> = Vec::new();
        for worker in &self.workers {
            let (reply, answer) = oneshot::channel();
            worker.send(WorkerMsg::Snapshot { reply })?;
            for (id, info, stats) in answer.await.map_err(|_| stopped())? {
                match merged.iter_mut().find(|(known, ..)| *known == id) {
                    Some((_, _, total)) => total.merge(&stats),
                    None => merged.push((id, info, stats)),
                }
            }
        }
        merged.sort_by_key(|(id, ..)| *id);
        Ok(merged)
    }

    /// Asks every worker to stop.
    pub fn shutdown(&self) {
        for worker in &self.workers {
            let _ = worker.send(WorkerMsg::Shutdown);
        }
    }

    fn lock_numbers(&self) -> std::sync::MutexGuard<'_, PortNumbers> {
        // Only the control plane takes this lock, never a worker.
        self.numbers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running data plane: its handle and its threads.
pub struct Dataplane {
    /// Where the control plane sends its requests.
    pub handle: DataplaneHandle,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Dataplane {
    /// Starts `workers` threads (at least one).
    pub fn spawn(mut config: SwitchConfig, workers: usize) -> io::Result<Dataplane> {
        let workers = workers.max(1);
        config.announce_learning = workers > 1;
        let epoch = Instant::now();
        let mut polls = Vec::with_capacity(workers);
        let mut links = Vec::with_capacity(workers);
        let mut inboxes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = mpsc::channel();
            polls.push(poll);
            links.push(WorkerLink { tx, waker });
            inboxes.push(rx);
        }
        let mut threads = Vec::with_capacity(workers);
        for (index, (poll, inbox)) in polls.into_iter().zip(inboxes).enumerate() {
            let peers = links
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != index)
                .map(|(_, link)| link.tx.clone())
                .collect();
            let config = config.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!("dataplane-{index}"))
                    // The worker's batches hold raw pointers for the kernel
                    // (not Send), so it is built on its own thread.
                    .spawn(move || Worker::new(poll, inbox, peers, config, epoch).run())?,
            );
        }
        let handle = DataplaneHandle {
            workers: links,
            numbers: Arc::new(Mutex::new(PortNumbers::new(config.max_ports))),
        };
        Ok(Dataplane { handle, threads })
    }

    /// Stops every worker and waits for them.
    pub fn stop(self) {
        self.handle.shutdown();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

struct Port {
    io: Arc<PortIo>,
    info: PortInfo,
    /// True if this worker reads the port.
    owned: bool,
    /// Arena slots waiting to be sent to this port, in order.
    tx_queue: Vec<u16>,
    /// True while the port sits in `Worker::readable`.
    in_readable: bool,
}

/// Fixed frame slots, reused every turn.
struct FrameArena {
    bytes: Vec<u8>,
    lens: Vec<u32>,
    used: usize,
}

/// The length recorded for a datagram whose sender is not the port's
/// client: the slot is skipped and counted.
const FROM_STRANGER: u32 = u32::MAX;

impl FrameArena {
    fn new() -> Self {
        FrameArena {
            bytes: vec![0; SLOT_LEN * ARENA_SLOTS],
            lens: vec![0; ARENA_SLOTS],
            used: 0,
        }
    }

    fn free_slots(&self) -> usize {
        ARENA_SLOTS - self.used
    }

    fn frame(&self, slot: u16) -> &[u8] {
        let start = usize::from(slot) * SLOT_LEN;
        &self.bytes[start..start + self.lens[usize::from(slot)] as usize]
    }
}

struct Worker {
    poll: Poll,
    inbox: mpsc::Receiver<WorkerMsg>,
    /// The other workers, told what this one learns.
    peers: Vec<mpsc::Sender<WorkerMsg>>,
    switch: Switch,
    ports: Vec<Option<Port>>,
    arena: FrameArena,
    rx_batch: RecvBatch,
    tx_batch: SendBatch,
    /// Owned ports that may have more to read.
    readable: VecDeque<PortId>,
    /// Ports with a non-empty transmit queue.
    pending_tx: Vec<PortId>,
    epoch: Instant,
    running: bool,
}

impl Worker {
    fn new(
        poll: Poll,
        inbox: mpsc::Receiver<WorkerMsg>,
        peers: Vec<mpsc::Sender<WorkerMsg>>,
        config: SwitchConfig,
        epoch: Instant,
    ) -> Self {
        let max_ports = config.max_ports as usize;
        Worker {
            poll,
            inbox,
            peers,
            switch: Switch::new(config),
            ports: (0..max_ports).map(|_| None).collect(),
            arena: FrameArena::new(),
            rx_batch: RecvBatch::new(RX_BATCH),
            tx_batch: SendBatch::new(TX_BATCH),
            readable: VecDeque::with_capacity(max_ports),
            pending_tx: Vec::with_capacity(max_ports),
            epoch,
            running: true,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.epoch.elapsed())
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
        while self.running {
            let timeout = if self.readable.is_empty() {
                next_housekeeping.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("data plane: waiting for events failed: {e}");
                }
                continue;
            }
            for event in events.iter() {
                if event.token() != WAKER {
                    self.mark_readable(PortId(event.token().0 as u32));
                }
            }
            self.handle_messages();
            self.receive_round();
            self.flush();
            if Instant::now() >= next_housekeeping {
                let now = self.now();
                self.switch.expire(now);
                next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
            }
        }
    }

    fn mark_readable(&mut self, id: PortId) {
        if let Some(Some(port)) = self.ports.get_mut(id.index()) {
            if port.owned && !port.in_readable {
                port.in_readable = true;
                self.readable.push_back(id);
            }
        }
    }

    fn handle_messages(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                WorkerMsg::AddPort {
                    id,
                    io,
                    info,
                    reply,
                } => {
                    let result = self.add_port(id, io, info, reply.is_some());
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                WorkerMsg::RemovePort { id, reply } => {
                    let _ = reply.send(self.remove_port(id));
                }
                WorkerMsg::Learned(news) => {
                    let now = self.now();
                    for a in &news {
                        self.switch.apply_announcement(now, a);
                    }
                }
                WorkerMsg::Snapshot { reply } => {
                    let snapshot = self
                        .switch
                        .ports()
                        .iter()
                        .filter_map(|&id| {
                            let port = self.ports[id.index()].as_ref()?;
                            Some((id, port.info.clone(), self.switch.port_stats(id)?.clone()))
                        })
                        .collect();
                    let _ = reply.send(snapshot);
                }
                WorkerMsg::Shutdown => self.running = false,
            }
        }
    }

    fn add_port(
        &mut self,
        id: PortId,
        io: Arc<PortIo>,
        info: PortInfo,
        owned: bool,
    ) -> io::Result<()> {
        if let Err(e) = self.switch.add_port(id) {
            // The control plane hands out numbers; this would be its bug.
            warn!("data plane: port {id} not added: {e}");
            return Err(io::Error::other(e));
        }
        if owned {
            let raw = io.fd().as_raw_fd();
            let token = Token(id.index());
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&raw), token, Interest::READABLE)
            {
                self.switch.remove_port(id);
                return Err(e);
            }
        }
        self.ports[id.index()] = Some(Port {
            io,
            info,
            owned,
            tx_queue: Vec::with_capacity(ARENA_SLOTS),
            in_readable: false,
        });
        // Frames may have arrived before the registration.
        self.mark_readable(id);
        Ok(())
    }

    /// Forgets a port; returns this worker's counters of it.
    fn remove_port(&mut self, id: PortId) -> PortStats {
        let Some(port) = self.ports.get_mut(id.index()).and_then(Option::take) else {
            return PortStats::default();
        };
        if port.owned {
            let raw = port.io.fd().as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
        self.switch.remove_port(id).unwrap_or_default()
    }

    /// Gives each readable port one batch; ports that may have more stay in
    /// the queue for the next turn.
    fn receive_round(&mut self) {
        let now = self.now();
        for _ in 0..self.readable.len() {
            if self.arena.free_slots() < RX_BATCH {
                self.flush();
            }
            let Some(id) = self.readable.pop_front() else {
                break;
            };
            let Some(Some(port)) = self.ports.get_mut(id.index()) else {
                continue;
            };
            port.in_readable = false;
            let first = self.arena.used;
            let limit = RX_BATCH.min(self.arena.free_slots());
            let received = match receive(&port.io, &mut self.rx_batch, &mut self.arena, limit) {
                Ok(n) => n,
                Err(e) => {
                    debug!("port {id}: receive failed: {e}");
                    0
                }
            };
            if received == limit {
                self.mark_readable(id);
            }
            for slot in first..first + received {
                self.forward(now, id, slot as u16);
            }
        }
    }

    /// Runs the forwarding core on one received frame and queues it.
    fn forward(&mut self, now: Timestamp, in_port: PortId, slot: u16) {
        let Worker {
            switch,
            ports,
            arena,
            pending_tx,
            ..
        } = self;
        if arena.lens[usize::from(slot)] == FROM_STRANGER {
            switch.record_drops(in_port, DropReason::UnknownSender, 1);
            return;
        }
        let mut enqueue = |to: PortId| {
            if let Some(Some(port)) = ports.get_mut(to.index()) {
                if port.tx_queue.is_empty() {
                    pending_tx.push(to);
                }
                port.tx_queue.push(slot);
            }
        };
        match switch.ingress(now, in_port, arena.frame(slot)) {
            Verdict::Unicast(to) => enqueue(to),
            Verdict::Flood => switch.flood_targets(in_port).for_each(enqueue),
            Verdict::Drop(_) => {}
        }
    }

    /// Sends every queued frame, then frees the arena. What was learned is
    /// announced first, so that a peer knows a station before the station's
    /// frame reaches anyone who might answer it.
    fn flush(&mut self) {
        self.announce();
        let Worker {
            switch,
            ports,
            arena,
            pending_tx,
            tx_batch,
            ..
        } = self;
        for id in pending_tx.drain(..) {
            let Some(Some(port)) = ports.get_mut(id.index()) else {
                continue;
            };
            let mut queue = port.tx_queue.as_slice();
            while !queue.is_empty() {
                let chunk = &queue[..queue.len().min(TX_BATCH)];
                let frames = chunk.iter().map(|&s| arena.frame(s));
                let result = match &*port.io {
                    PortIo::Datagram { socket, .. } => tx_batch.send(socket.as_fd(), frames),
                    PortIo::Tap(iface) => send_tap(iface, frames),
                };
                let sent = match result {
                    Ok(n) => n,
                    Err(e) => {
                        let reason = if e.kind() == io::ErrorKind::WouldBlock {
                            DropReason::QueueFull
                        } else {
                            DropReason::TxError
                        };
                        switch.record_drops(id, reason, queue.len() as u64);
                        break;
                    }
                };
                for &slot in &chunk[..sent] {
                    switch.record_tx(id, arena.frame(slot).len());
                }
                queue = &queue[sent..];
                if sent < chunk.len() {
                    // The client's queue is full: drop the rest for it.
                    switch.record_drops(id, DropReason::QueueFull, queue.len() as u64);
                    break;
                }
            }
            port.tx_queue.clear();
        }
        arena.used = 0;
    }

    /// Tells the other workers what this one learned this turn.
    fn announce(&mut self) {
        let news: Vec<Announcement> = self.switch.drain_announcements().collect();
        if news.is_empty() {
            return;
        }
        // Peers apply them before their next receive round; no need to
        // wake a peer that is asleep (it has no frame to forward yet).
        for peer in &self.peers {
            let _ = peer.send(WorkerMsg::Learned(news.clone()));
        }
    }
}

/// Receives up to `limit` frames from a port into the arena; returns how
/// many slots were used. A datagram from a stranger keeps its slot, marked
/// [`FROM_STRANGER`], so that the caller counts it.
fn receive(
    io: &PortIo,
    rx_batch: &mut RecvBatch,
    arena: &mut FrameArena,
    limit: usize,
) -> io::Result<usize> {
    let first = arena.used;
    let region = &mut arena.bytes[first * SLOT_LEN..(first + limit) * SLOT_LEN];
    let received = match io {
        PortIo::Datagram { socket, client } => {
            let n = rx_batch.recv(socket.as_fd(), region, SLOT_LEN)?;
            for i in 0..n {
                arena.lens[first + i] = if client.matches_received(rx_batch.source_of(i)) {
                    rx_batch.len_of(i) as u32
                } else {
                    FROM_STRANGER
                };
            }
            n
        }
        PortIo::Tap(iface) => {
            let mut n = 0;
            for slot in region.chunks_exact_mut(SLOT_LEN) {
                match iface.recv(slot) {
                    Ok(len) => {
                        arena.lens[first + n] = len as u32;
                        n += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if n == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            n
        }
    };
    arena.used += received;
    Ok(received)
}

/// Writes frames to a tap one by one (a tap has no batched write), stopping
/// at the first error: an error on the first frame is returned, a later one
/// ends the batch early like a full queue.
fn send_tap<'a>(
    iface: &tun_tap::Iface,
    frames: impl Iterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    let mut sent = 0;
    for frame in frames {
        match iface.send(frame) {
            Ok(_) => sent += 1,
            Err(e) if sent == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(sent)
}
