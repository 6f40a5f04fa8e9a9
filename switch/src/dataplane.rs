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
//! 4. flushes every destination's queue with `sendmmsg`, never blocking.
//!    What a client's socket cannot take now waits in that port's backlog
//!    (at most [`BACKLOG_LIMIT`] frames, copied out of the arena), and the
//!    worker asks epoll to say when the client has room again: a connected
//!    Unix datagram socket becomes writable when its peer's queue drains.
//!    Only what overflows the backlog is dropped, counted as `queue_full`;
//!    no other port waits.
//!
//! Back-pressure: when a port's backlog passes [`PAUSE_HIGH`], the ports
//! whose unicast frames filled it are not read until it drains below
//! [`PAUSE_LOW`], so a fast sender waits (its own socket fills and its
//! sends block or fail, as with a real NIC) instead of having most of its
//! frames thrown away in the switch. A pause lasts at most [`PAUSE_MAX`],
//! and a client that makes no progress for [`STALL_AFTER`] pauses nobody:
//! its frames are dropped instead, so a hung client cannot stop the
//! ports that talk to it.
//!
//! Ports that still had data after their batch are visited again on the
//! next turn without sleeping, so one busy port cannot starve the others.
//! Nothing on this path allocates or takes a lock.

use std::collections::VecDeque;
use std::io;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
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
/// The most frames waiting for one client whose socket is full.
pub const BACKLOG_LIMIT: usize = 256;
/// Frame slots shared by the backlogs of one worker's ports. Its pages are
/// only touched when used.
const BACKLOG_SLOTS: usize = 2048;
/// A backlog this long pauses the ports that filled it.
pub const PAUSE_HIGH: usize = BACKLOG_LIMIT / 2;
/// Paused ports resume when the backlog is this short again.
pub const PAUSE_LOW: usize = BACKLOG_LIMIT / 8;
/// The longest a port stays paused.
pub const PAUSE_MAX: Duration = Duration::from_millis(20);
/// A client that took nothing for this long pauses nobody.
pub const STALL_AFTER: Duration = Duration::from_millis(100);
/// Busy polling follows only turns this light: under load the next turn
/// comes soon anyway, and spinning would take CPU from the clients.
const SPIN_MAX_BATCH: usize = 4;
/// How many endpoints a switch of `max_ports` ports can hold: several
/// clients may share a port.
pub fn max_endpoints(max_ports: usize) -> usize {
    max_ports * 4
}

/// How often aged-out forwarding entries are reclaimed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

const WAKER: Token = Token(usize::MAX);

/// One client connection to a port (several may share a port): the
/// index of its socket in every worker and its epoll token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointId(pub u32);

impl EndpointId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// How a port moves frames.
pub enum PortIo {
    /// A datagram socket connected to its client (UML's daemon transport).
    /// `client` is the address the client sent; frames from any other
    /// source are dropped.
    Datagram {
        socket: UnixDatagram,
        client: SockaddrUn,
    },
    /// A connected `SOCK_SEQPACKET` socket, one bare frame per message
    /// (UML's vector transport `bess`). A zero-length read is the peer's
    /// hang-up.
    Seqpacket(socket2::Socket),
    /// A byte stream of records, each a 4-byte big-endian length and a
    /// frame (QEMU's `-netdev stream`).
    Stream(StreamPort),
    /// A host tap interface.
    Tap(tun_tap::Iface),
}

/// The most bytes waiting to be written to one stream client.
const STREAM_TX_LIMIT: usize = 256 * 1024;
/// A stream record's length prefix.
const STREAM_PREFIX: usize = 4;

/// A stream connection and what waits to be written to it.
pub struct StreamPort {
    socket: UnixStream,
    /// Bytes not yet written. Every worker may send to the port, and a
    /// record must not be cut by another's, so this is the one lock of the
    /// data plane: taken once per flush, for stream ports only.
    tx: Mutex<StreamTx>,
}

impl StreamPort {
    /// Wraps a connected, non-blocking stream.
    pub fn new(socket: UnixStream) -> Self {
        StreamPort {
            socket,
            tx: Mutex::new(StreamTx {
                bytes: Vec::with_capacity(STREAM_TX_LIMIT),
                start: 0,
            }),
        }
    }

    fn tx(&self) -> std::sync::MutexGuard<'_, StreamTx> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct StreamTx {
    bytes: Vec<u8>,
    /// How much of `bytes` is already written.
    start: usize,
}

/// Bytes read from a stream client that do not make a whole record yet
/// (kept by the worker that reads the port).
struct StreamRx {
    bytes: Box<[u8]>,
    len: usize,
}

impl StreamRx {
    fn new() -> Self {
        StreamRx {
            bytes: vec![0; 2 * (STREAM_PREFIX + MAX_FRAME_LEN)].into_boxed_slice(),
            len: 0,
        }
    }
}

impl PortIo {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            PortIo::Datagram { socket, .. } => socket.as_fd(),
            PortIo::Seqpacket(socket) => socket.as_fd(),
            PortIo::Stream(stream) => stream.socket.as_fd(),
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
    /// Every endpoint slot is taken.
    #[error("all {0} client slots are in use (raise --max-ports)")]
    NoEndpoint(usize),
}

/// Messages to a worker.
enum WorkerMsg {
    /// Attach an endpoint to a port; `reply` is given to its owner only.
    AddEndpoint {
        ep: EndpointId,
        port: PortId,
        io: Arc<PortIo>,
        info: PortInfo,
        reply: Option<oneshot::Sender<io::Result<()>>>,
        /// Told when the peer hangs up (owner only; connection-oriented
        /// transports, whose data connection is also their control).
        on_close: Option<oneshot::Sender<()>>,
    },
    /// Detach an endpoint; if it was its port's last, the port goes and
    /// this worker's counters of it come back.
    RemoveEndpoint {
        ep: EndpointId,
        reply: oneshot::Sender<Option<PortStats>>,
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

/// A place on the switch, reserved by [`DataplaneHandle::claim`]: a port
/// number and an endpoint on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The port.
    pub port: PortId,
    /// The client's own endpoint on it.
    pub ep: EndpointId,
}

/// Port numbers and endpoint slots in use; only the control plane takes
/// this lock, never a worker.
struct Places {
    numbers: PortNumbers,
    endpoints: Vec<bool>,
}

/// The control plane's end of the data plane.
#[derive(Clone)]
pub struct DataplaneHandle {
    workers: Vec<WorkerLink>,
    places: Arc<Mutex<Places>>,
}

impl DataplaneHandle {
    /// Attaches a client that shares no port (a tap) as the first free
    /// number, and returns its claim once its owner watches it.
    pub async fn add_port(
        &self,
        io: PortIo,
        info: PortInfo,
    ) -> io::Result<Result<Claim, AddPortError>> {
        let claim = match self.claim(None, None) {
            Ok(claim) => claim,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.attach(claim, io, info, None).await?.map(|()| claim))
    }

    /// Reserves a place for a client of uid `user`: port `wanted` (joined
    /// if the same user has it) or the first free one, and an endpoint.
    /// Give it back with [`DataplaneHandle::release`] if it is not attached.
    pub fn claim(&self, wanted: Option<PortId>, user: Option<u32>) -> Result<Claim, AddPortError> {
        let mut places = self.lock_places();
        let Some(ep) = places.endpoints.iter().position(|used| !used) else {
            return Err(AddPortError::NoEndpoint(places.endpoints.len()));
        };
        let port = places
            .numbers
            .claim(wanted, user)
            .map_err(AddPortError::Number)?;
        places.endpoints[ep] = true;
        Ok(Claim {
            port,
            ep: EndpointId(ep as u32),
        })
    }

    /// Gives back a claim that was not attached, or whose endpoint every
    /// worker has removed.
    pub fn release(&self, claim: Claim) {
        let mut places = self.lock_places();
        places.numbers.release(claim.port);
        if let Some(used) = places.endpoints.get_mut(claim.ep.index()) {
            *used = false;
        }
    }

    /// Attaches an endpoint under a claim, once its owner watches it; on
    /// failure the claim is given back.
    pub async fn attach(
        &self,
        claim: Claim,
        io: PortIo,
        info: PortInfo,
        mut on_close: Option<oneshot::Sender<()>>,
    ) -> io::Result<Result<(), AddPortError>> {
        let io = Arc::new(io);
        let owner = claim.ep.index() % self.workers.len();
        let (reply, registered) = oneshot::channel();
        let mut reply = Some(reply);
        for (w, worker) in self.workers.iter().enumerate() {
            let owns = w == owner;
            worker.send(WorkerMsg::AddEndpoint {
                ep: claim.ep,
                port: claim.port,
                io: io.clone(),
                info: info.clone(),
                reply: if owns { reply.take() } else { None },
                on_close: if owns { on_close.take() } else { None },
            })?;
        }
        match registered.await.map_err(|_| stopped())? {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                self.remove(claim).await?;
                Ok(Err(AddPortError::Watch(e)))
            }
        }
    }

    /// Detaches an endpoint and gives back its claim. When it was the last
    /// on its port, the port goes too and its final counters come back.
    pub async fn remove(&self, claim: Claim) -> io::Result<Option<PortStats>> {
        let mut answers = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (reply, answer) = oneshot::channel();
            worker.send(WorkerMsg::RemoveEndpoint {
                ep: claim.ep,
                reply,
            })?;
            answers.push(answer);
        }
        // Each worker handles its messages in order, so the place can be
        // reused at once: a later AddEndpoint reaches every worker after this.
        self.release(claim);
        let mut total: Option<PortStats> = None;
        for answer in answers {
            if let Some(stats) = answer.await.map_err(|_| stopped())? {
                total.get_or_insert_with(PortStats::default).merge(&stats);
            }
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

    fn lock_places(&self) -> std::sync::MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running data plane: its handle and its threads.
pub struct Dataplane {
    /// Where the control plane sends its requests.
    pub handle: DataplaneHandle,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Dataplane {
    /// Starts `workers` threads (at least one), which poll without sleeping
    /// for `busy_poll` after each frame.
    pub fn spawn(
        mut config: SwitchConfig,
        workers: usize,
        busy_poll: Duration,
    ) -> io::Result<Dataplane> {
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
                    .spawn(move || {
                        Worker::new(poll, inbox, peers, config, busy_poll, epoch).run()
                    })?,
            );
        }
        let handle = DataplaneHandle {
            workers: links,
            places: Arc::new(Mutex::new(Places {
                numbers: PortNumbers::new(config.max_ports),
                endpoints: vec![false; max_endpoints(config.max_ports as usize)],
            })),
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

/// A worker's view of one endpoint.
struct Endpoint {
    /// The switch port it belongs to.
    port: PortId,
    io: Arc<PortIo>,
    info: PortInfo,
    /// True if this worker reads the endpoint.
    owned: bool,
    /// Arena slots waiting to be sent to this port this turn, in order.
    tx_queue: Vec<u16>,
    /// Frames that did not fit in the client's socket, oldest first:
    /// slots of the worker's [`BacklogPool`], sent before `tx_queue`.
    backlog: VecDeque<u16>,
    /// True while the port sits in `Worker::pending_tx`.
    in_pending_tx: bool,
    /// True while this worker asks epoll for writability of the port.
    watching_tx: bool,
    /// When the client last took a frame from this worker.
    last_progress: Instant,
    /// Endpoints whose unicast frames were queued here this turn.
    contributors: Vec<EndpointId>,
    /// Endpoints paused until this one's backlog drains.
    waiters: Vec<EndpointId>,
    /// While paused (and since when), this port is not read.
    paused_since: Option<Instant>,
    /// True while the port sits in `Worker::readable`.
    in_readable: bool,
    /// Told when the peer hangs up (see [`WorkerMsg::AddEndpoint`]).
    on_close: Option<oneshot::Sender<()>>,
    /// The peer has hung up: nothing more to read.
    hung_up: bool,
    /// A stream port's partial record (owner only).
    stream_rx: Option<StreamRx>,
}

impl Endpoint {
    /// True while frames wait for room in the client's socket.
    fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
            || matches!(&*self.io, PortIo::Stream(stream) if !stream.tx().bytes.is_empty())
    }
}

/// Frame slots for backlogs, with a free list.
struct BacklogPool {
    bytes: Vec<u8>,
    lens: Vec<u32>,
    free: Vec<u16>,
}

impl BacklogPool {
    fn new() -> Self {
        BacklogPool {
            bytes: vec![0; SLOT_LEN * BACKLOG_SLOTS],
            lens: vec![0; BACKLOG_SLOTS],
            free: (0..BACKLOG_SLOTS as u16).rev().collect(),
        }
    }

    /// Copies `frame` into a free slot, if there is one.
    fn store(&mut self, frame: &[u8]) -> Option<u16> {
        let slot = self.free.pop()?;
        let start = usize::from(slot) * SLOT_LEN;
        self.bytes[start..start + frame.len()].copy_from_slice(frame);
        self.lens[usize::from(slot)] = frame.len() as u32;
        Some(slot)
    }

    fn frame(&self, slot: u16) -> &[u8] {
        let start = usize::from(slot) * SLOT_LEN;
        &self.bytes[start..start + self.lens[usize::from(slot)] as usize]
    }

    fn release(&mut self, slot: u16) {
        self.free.push(slot);
    }
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
    /// Indexed by endpoint.
    endpoints: Vec<Option<Endpoint>>,
    /// The endpoints of each port, indexed by port.
    members: Vec<Vec<EndpointId>>,
    arena: FrameArena,
    backlog_pool: BacklogPool,
    rx_batch: RecvBatch,
    tx_batch: SendBatch,
    /// Owned endpoints that may have more to read.
    readable: VecDeque<EndpointId>,
    /// Endpoints with frames to send (this turn's or backlogged).
    pending_tx: Vec<EndpointId>,
    /// Endpoints not read because of back-pressure.
    paused: Vec<EndpointId>,
    /// How long to keep polling without sleeping after the last frame.
    busy_poll: Duration,
    epoch: Instant,
    running: bool,
}

impl Worker {
    fn new(
        poll: Poll,
        inbox: mpsc::Receiver<WorkerMsg>,
        peers: Vec<mpsc::Sender<WorkerMsg>>,
        config: SwitchConfig,
        busy_poll: Duration,
        epoch: Instant,
    ) -> Self {
        let max_ports = config.max_ports as usize;
        Worker {
            poll,
            inbox,
            peers,
            switch: Switch::new(config),
            endpoints: (0..max_endpoints(max_ports)).map(|_| None).collect(),
            members: vec![Vec::new(); max_ports],
            arena: FrameArena::new(),
            backlog_pool: BacklogPool::new(),
            rx_batch: RecvBatch::new(RX_BATCH),
            tx_batch: SendBatch::new(TX_BATCH),
            readable: VecDeque::with_capacity(max_endpoints(max_ports)),
            pending_tx: Vec::with_capacity(max_endpoints(max_ports)),
            paused: Vec::with_capacity(max_endpoints(max_ports)),
            busy_poll,
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
        let mut last_frame = Instant::now();
        while self.running {
            let timeout = if !self.readable.is_empty()
                || (!self.busy_poll.is_zero() && last_frame.elapsed() < self.busy_poll)
            {
                Duration::ZERO
            } else if !self.paused.is_empty() {
                PAUSE_MAX
            } else {
                next_housekeeping.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("data plane: waiting for events failed: {e}");
                }
                continue;
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let id = EndpointId(event.token().0 as u32);
                if event.is_readable() {
                    self.mark_readable(id);
                }
                if event.is_writable() {
                    self.mark_pending_tx(id);
                }
            }
            self.handle_messages();
            self.end_overdue_pauses();
            let received = self.receive_round();
            if received > 0 && received <= SPIN_MAX_BATCH {
                last_frame = Instant::now();
            }
            self.flush();
            if Instant::now() >= next_housekeeping {
                let now = self.now();
                self.switch.expire(now);
                next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
            }
        }
    }

    fn mark_readable(&mut self, id: EndpointId) {
        if let Some(Some(port)) = self.endpoints.get_mut(id.index()) {
            if port.owned && !port.in_readable && port.paused_since.is_none() && !port.hung_up {
                port.in_readable = true;
                self.readable.push_back(id);
            }
        }
    }

    /// Stops reading `id` until `congested` drains (or [`PAUSE_MAX`]).
    fn pause(&mut self, id: EndpointId, congested: EndpointId) {
        let Some(Some(port)) = self.endpoints.get_mut(id.index()) else {
            return;
        };
        if port.paused_since.is_some() || !port.owned {
            return;
        }
        port.paused_since = Some(Instant::now());
        self.paused.push(id);
        if let Some(Some(congested)) = self.endpoints.get_mut(congested.index()) {
            congested.waiters.push(id);
        }
    }

    /// Reads `id` again; it is put on the readable list, since events that
    /// arrived while it was paused were not acted on.
    fn resume(&mut self, id: EndpointId) {
        if let Some(Some(port)) = self.endpoints.get_mut(id.index()) {
            if port.paused_since.take().is_some() {
                self.paused.retain(|&p| p != id);
                self.mark_readable(id);
            }
        }
    }

    fn end_overdue_pauses(&mut self) {
        let overdue: Vec<EndpointId> = self
            .paused
            .iter()
            .copied()
            .filter(|p| {
                matches!(&self.endpoints[p.index()], Some(port)
                    if port.paused_since.is_some_and(|t| t.elapsed() >= PAUSE_MAX))
            })
            .collect();
        for id in overdue {
            self.resume(id);
        }
    }

    /// Queues a flush for a port whose client may have room again.
    fn mark_pending_tx(&mut self, id: EndpointId) {
        if let Some(Some(port)) = self.endpoints.get_mut(id.index()) {
            if port.has_backlog() && !port.in_pending_tx {
                port.in_pending_tx = true;
                self.pending_tx.push(id);
            }
        }
    }

    fn handle_messages(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                WorkerMsg::AddEndpoint {
                    ep,
                    port,
                    io,
                    info,
                    reply,
                    on_close,
                } => {
                    let owned = reply.is_some();
                    let result = self.add_endpoint(ep, port, io, info, owned, on_close);
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                WorkerMsg::RemoveEndpoint { ep, reply } => {
                    let _ = reply.send(self.remove_endpoint(ep));
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
                            let first = self.members[id.index()].first()?;
                            let ep = self.endpoints[first.index()].as_ref()?;
                            Some((id, ep.info.clone(), self.switch.port_stats(id)?.clone()))
                        })
                        .collect();
                    let _ = reply.send(snapshot);
                }
                WorkerMsg::Shutdown => self.running = false,
            }
        }
    }

    fn add_endpoint(
        &mut self,
        ep: EndpointId,
        port: PortId,
        io: Arc<PortIo>,
        info: PortInfo,
        owned: bool,
        on_close: Option<oneshot::Sender<()>>,
    ) -> io::Result<()> {
        let (Some(slot), Some(members)) = (
            self.endpoints.get(ep.index()),
            self.members.get(port.index()),
        ) else {
            return Err(io::Error::other(format!(
                "endpoint {} or port {port} out of range",
                ep.0
            )));
        };
        if slot.is_some() {
            // The control plane hands out endpoints; this would be its bug.
            return Err(io::Error::other(format!("endpoint {} is in use", ep.0)));
        }
        let first_of_port = members.is_empty();
        if first_of_port {
            self.switch.add_port(port).map_err(io::Error::other)?;
        }
        if owned {
            let raw = io.fd().as_raw_fd();
            let token = Token(ep.index());
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&raw), token, Interest::READABLE)
            {
                if first_of_port {
                    self.switch.remove_port(port);
                }
                return Err(e);
            }
        }
        self.members[port.index()].push(ep);
        let io_for_rx = io.clone();
        self.endpoints[ep.index()] = Some(Endpoint {
            port,
            io,
            info,
            owned,
            tx_queue: Vec::with_capacity(ARENA_SLOTS),
            backlog: VecDeque::with_capacity(BACKLOG_LIMIT),
            in_pending_tx: false,
            watching_tx: false,
            last_progress: Instant::now(),
            contributors: Vec::new(),
            waiters: Vec::new(),
            paused_since: None,
            in_readable: false,
            on_close,
            hung_up: false,
            stream_rx: (owned && matches!(&*io_for_rx, PortIo::Stream(_))).then(StreamRx::new),
        });
        // Frames may have arrived before the registration.
        self.mark_readable(ep);
        Ok(())
    }

    /// Forgets an endpoint; when it was its port's last, the port goes too
    /// and this worker's counters of it are returned.
    fn remove_endpoint(&mut self, ep: EndpointId) -> Option<PortStats> {
        let endpoint = self.endpoints.get_mut(ep.index()).and_then(Option::take)?;
        if endpoint.owned || endpoint.watching_tx {
            let raw = endpoint.io.fd().as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
        for slot in endpoint.backlog {
            self.backlog_pool.release(slot);
        }
        self.paused.retain(|&p| p != ep);
        let members = &mut self.members[endpoint.port.index()];
        members.retain(|&e| e != ep);
        if members.is_empty() {
            self.switch.remove_port(endpoint.port)
        } else {
            None
        }
    }

    /// Gives each readable port one batch; ports that may have more stay in
    /// the queue for the next turn.
    fn receive_round(&mut self) -> usize {
        let now = self.now();
        let mut total = 0;
        for _ in 0..self.readable.len() {
            if self.arena.free_slots() < RX_BATCH {
                self.flush();
            }
            let Some(id) = self.readable.pop_front() else {
                break;
            };
            let Some(Some(port)) = self.endpoints.get_mut(id.index()) else {
                continue;
            };
            port.in_readable = false;
            if port.paused_since.is_some() {
                continue; // resume() puts it back
            }
            let first = self.arena.used;
            let limit = RX_BATCH.min(self.arena.free_slots());
            let received = match receive(
                &port.io,
                port.stream_rx.as_mut(),
                &mut self.rx_batch,
                &mut self.arena,
                limit,
            ) {
                Ok(Received::Frames(n)) => n,
                Ok(Received::Malformed { frames, length }) => {
                    warn!(
                        "port {} ({}): stream record length {length} cannot be a frame (1 to {MAX_FRAME_LEN} bytes); closing the connection",
                        port.port, port.info.peer
                    );
                    port.hung_up = true;
                    if let Some(notify) = port.on_close.take() {
                        let _ = notify.send(());
                    }
                    frames
                }
                Ok(Received::HangUp(n)) => {
                    port.hung_up = true;
                    if let Some(notify) = port.on_close.take() {
                        let _ = notify.send(());
                    }
                    n
                }
                Err(e) => {
                    debug!("port {}: receive failed: {e}", port.port);
                    0
                }
            };
            if received == limit {
                self.mark_readable(id);
            }
            total += received;
            for slot in first..first + received {
                self.forward(now, id, slot as u16);
            }
        }
        total
    }

    /// Runs the forwarding core on one received frame and queues it on
    /// every endpoint of each destination port.
    fn forward(&mut self, now: Timestamp, in_ep: EndpointId, slot: u16) {
        let Worker {
            switch,
            endpoints,
            members,
            arena,
            pending_tx,
            ..
        } = self;
        let Some(Some(ingress)) = endpoints.get(in_ep.index()) else {
            return;
        };
        let in_port = ingress.port;
        if arena.lens[usize::from(slot)] == FROM_STRANGER {
            switch.record_drops(in_port, DropReason::UnknownSender, 1);
            return;
        }
        let verdict = switch.ingress(now, in_port, arena.frame(slot));
        let mut enqueue = |to: PortId, unicast: bool| {
            for &ep in &members[to.index()] {
                let Some(Some(endpoint)) = endpoints.get_mut(ep.index()) else {
                    continue;
                };
                if !endpoint.in_pending_tx {
                    endpoint.in_pending_tx = true;
                    pending_tx.push(ep);
                }
                endpoint.tx_queue.push(slot);
                if unicast
                    && endpoint.contributors.last() != Some(&in_ep)
                    && !endpoint.contributors.contains(&in_ep)
                {
                    endpoint.contributors.push(in_ep);
                }
            }
        };
        match verdict {
            Verdict::Unicast(to) => enqueue(to, true),
            Verdict::Flood => switch
                .flood_targets(in_port)
                .for_each(|to| enqueue(to, false)),
            Verdict::Drop(_) => {}
        }
    }

    /// Sends every queued frame (backlogs first), then frees the arena.
    /// What was learned is announced first, so that a peer knows a station
    /// before the station's frame reaches anyone who might answer it.
    fn flush(&mut self) {
        self.announce();
        let Worker {
            poll,
            switch,
            endpoints,
            arena,
            backlog_pool,
            pending_tx,
            tx_batch,
            ..
        } = self;
        let mut pressure = Vec::new();
        for id in pending_tx.drain(..) {
            let Some(Some(port)) = endpoints.get_mut(id.index()) else {
                continue;
            };
            port.in_pending_tx = false;
            flush_endpoint(port, switch, arena, backlog_pool, tx_batch);
            let backlog = port.backlog.len();
            let stalled = port.last_progress.elapsed() >= STALL_AFTER;
            if backlog >= PAUSE_HIGH && !stalled && !port.contributors.is_empty() {
                pressure.push((id, std::mem::take(&mut port.contributors), true));
            } else if backlog <= PAUSE_LOW && !port.waiters.is_empty() {
                pressure.push((id, std::mem::take(&mut port.waiters), false));
            }
            port.contributors.clear();
            let want_writable = port.has_backlog();
            if want_writable != port.watching_tx {
                match watch_writable(poll, id, port, want_writable) {
                    Ok(()) => port.watching_tx = want_writable,
                    Err(e) => warn!(
                        "port {}: cannot watch for room in its socket: {e}",
                        port.port
                    ),
                }
            }
        }
        arena.used = 0;
        for (congested, endpoints, pause) in pressure {
            for id in endpoints {
                if pause && id != congested {
                    self.pause(id, congested);
                } else {
                    self.resume(id);
                }
            }
        }
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

/// Sends an endpoint's backlog, then its queue of this turn, until the
/// client's socket is full; keeps what is left in the backlog, up to
/// [`BACKLOG_LIMIT`], and drops the rest.
fn flush_endpoint(
    port: &mut Endpoint,
    switch: &mut Switch,
    arena: &FrameArena,
    pool: &mut BacklogPool,
    tx_batch: &mut SendBatch,
) {
    let id = port.port;
    if let PortIo::Stream(stream) = &*port.io {
        flush_stream(id, stream, &port.tx_queue, switch, arena);
        if stream_progress(stream) {
            port.last_progress = Instant::now();
        }
        port.tx_queue.clear();
        return;
    }
    let mut queued = 0; // how much of `tx_queue` has been sent
    loop {
        let from_backlog = port.backlog.len().min(TX_BATCH);
        let from_queue = (TX_BATCH - from_backlog).min(port.tx_queue.len() - queued);
        if from_backlog + from_queue == 0 {
            break;
        }
        let frames = port
            .backlog
            .iter()
            .take(from_backlog)
            .map(|&s| pool.frame(s))
            .chain(
                port.tx_queue[queued..queued + from_queue]
                    .iter()
                    .map(|&s| arena.frame(s)),
            );
        let result = match &*port.io {
            PortIo::Datagram { socket, .. } => tx_batch.send(socket.as_fd(), frames),
            PortIo::Seqpacket(socket) => tx_batch.send(socket.as_fd(), frames),
            PortIo::Stream(_) => unreachable!("streams are flushed by flush_stream"),
            PortIo::Tap(iface) => send_tap(iface, frames),
        };
        let sent = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                // The client is gone or broken: nothing queued for it can
                // be delivered. (Its control connection decides when the
                // port goes.)
                debug!("port {id}: send failed: {e}");
                let lost = port.backlog.len() + port.tx_queue.len() - queued;
                switch.record_drops(id, DropReason::TxError, lost as u64);
                for slot in port.backlog.drain(..) {
                    pool.release(slot);
                }
                port.tx_queue.clear();
                return;
            }
        };
        if sent > 0 {
            port.last_progress = Instant::now();
        }
        for _ in 0..sent.min(from_backlog) {
            if let Some(slot) = port.backlog.pop_front() {
                switch.record_tx(id, pool.frame(slot).len());
                pool.release(slot);
            }
        }
        let sent_from_queue = sent.saturating_sub(from_backlog);
        for &slot in &port.tx_queue[queued..queued + sent_from_queue] {
            switch.record_tx(id, arena.frame(slot).len());
        }
        queued += sent_from_queue;
        if sent < from_backlog + from_queue {
            break; // the client's socket is full
        }
    }
    let mut dropped = 0u64;
    for &slot in &port.tx_queue[queued..] {
        let kept = port.backlog.len() < BACKLOG_LIMIT
            && pool
                .store(arena.frame(slot))
                .map(|copy| port.backlog.push_back(copy))
                .is_some();
        if !kept {
            dropped += 1;
        }
    }
    if dropped > 0 {
        switch.record_drops(id, DropReason::QueueFull, dropped);
    }
    port.tx_queue.clear();
}

/// Appends this turn's frames for a stream port as records (dropping what
/// does not fit in [`STREAM_TX_LIMIT`]), then writes what the socket takes.
fn flush_stream(
    id: PortId,
    stream: &StreamPort,
    queue: &[u16],
    switch: &mut Switch,
    arena: &FrameArena,
) {
    let mut tx = stream.tx();
    let mut dropped = 0u64;
    for &slot in queue {
        let frame = arena.frame(slot);
        if tx.bytes.len() + STREAM_PREFIX + frame.len() > STREAM_TX_LIMIT {
            dropped += 1;
            continue;
        }
        tx.bytes
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        tx.bytes.extend_from_slice(frame);
        switch.record_tx(id, frame.len());
    }
    if dropped > 0 {
        switch.record_drops(id, DropReason::QueueFull, dropped);
    }
    while tx.start < tx.bytes.len() {
        let StreamTx { bytes, start } = &mut *tx;
        match (&stream.socket).write(&bytes[*start..]) {
            Ok(0) => break,
            Ok(n) => *start += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                debug!("port {id}: stream write failed: {e}");
                switch.record_drops(id, DropReason::TxError, 1);
                bytes.clear();
                *start = 0;
                return;
            }
        }
    }
    if tx.start == tx.bytes.len() {
        tx.bytes.clear();
        tx.start = 0;
    } else if tx.start > STREAM_TX_LIMIT / 2 {
        let start = tx.start;
        tx.bytes.drain(..start);
        tx.start = 0;
    }
}

/// True if a stream port's writes made progress (its buffer is not stuck
/// full): what [`STALL_AFTER`] measures for other ports.
fn stream_progress(stream: &StreamPort) -> bool {
    let tx = stream.tx();
    tx.bytes.len() - tx.start < STREAM_TX_LIMIT / 2
}

/// Starts or stops asking epoll to say when a port's socket has room. The
/// owner already watches the port for reading; other workers register it
/// for writing only while they need to.
fn watch_writable(poll: &Poll, id: EndpointId, port: &Endpoint, on: bool) -> io::Result<()> {
    let raw = port.io.fd().as_raw_fd();
    let mut source = SourceFd(&raw);
    let token = Token(id.index());
    let registry = poll.registry();
    match (port.owned, on) {
        (true, true) => {
            registry.reregister(&mut source, token, Interest::READABLE | Interest::WRITABLE)
        }
        (true, false) => registry.reregister(&mut source, token, Interest::READABLE),
        (false, true) => registry.register(&mut source, token, Interest::WRITABLE),
        (false, false) => registry.deregister(&mut source),
    }
}

/// What [`receive`] got: frames in that many arena slots, and whether the
/// peer hung up after them.
enum Received {
    Frames(usize),
    HangUp(usize),
    /// A stream record whose length cannot be a frame; the stream cannot
    /// be resynchronised.
    Malformed {
        frames: usize,
        length: usize,
    },
}

/// Receives up to `limit` frames from a port into the arena. A datagram
/// from a stranger keeps its slot, marked [`FROM_STRANGER`], so that the
/// caller counts it.
fn receive(
    io: &PortIo,
    stream_rx: Option<&mut StreamRx>,
    rx_batch: &mut RecvBatch,
    arena: &mut FrameArena,
    limit: usize,
) -> io::Result<Received> {
    if let (PortIo::Stream(stream), Some(rx)) = (io, stream_rx) {
        return receive_stream(&stream.socket, rx, arena, limit);
    }
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
        PortIo::Seqpacket(socket) => {
            let n = rx_batch.recv(socket.as_fd(), region, SLOT_LEN)?;
            // At the peer's hang-up every further message reads as empty;
            // the frames before the first empty one are real.
            match (0..n).find(|&i| rx_batch.len_of(i) == 0) {
                Some(frames) => {
                    for i in 0..frames {
                        arena.lens[first + i] = rx_batch.len_of(i) as u32;
                    }
                    arena.used += frames;
                    return Ok(Received::HangUp(frames));
                }
                None => {
                    for i in 0..n {
                        arena.lens[first + i] = rx_batch.len_of(i) as u32;
                    }
                    n
                }
            }
        }
        PortIo::Stream(_) => 0, // read by its owner, with its StreamRx
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
    Ok(Received::Frames(received))
}

/// Reads a stream port: whole records become frames in the arena (up to
/// `limit`), a partial one waits in `rx` for the rest.
fn receive_stream(
    socket: &UnixStream,
    rx: &mut StreamRx,
    arena: &mut FrameArena,
    limit: usize,
) -> io::Result<Received> {
    let mut frames = 0;
    loop {
        // Take every whole record already buffered.
        let mut consumed = 0;
        while frames < limit && rx.len - consumed >= STREAM_PREFIX {
            let prefix = &rx.bytes[consumed..consumed + STREAM_PREFIX];
            let length = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if length == 0 || length > MAX_FRAME_LEN {
                arena.used += frames;
                return Ok(Received::Malformed { frames, length });
            }
            if rx.len - consumed < STREAM_PREFIX + length {
                break;
            }
            let body = consumed + STREAM_PREFIX;
            let slot = arena.used + frames;
            arena.bytes[slot * SLOT_LEN..slot * SLOT_LEN + length]
                .copy_from_slice(&rx.bytes[body..body + length]);
            arena.lens[slot] = length as u32;
            frames += 1;
            consumed = body + length;
        }
        rx.bytes.copy_within(consumed..rx.len, 0);
        rx.len -= consumed;
        if frames == limit {
            arena.used += frames;
            return Ok(Received::Frames(frames));
        }
        match (&*socket).read(&mut rx.bytes[rx.len..]) {
            Ok(0) => {
                arena.used += frames;
                return Ok(Received::HangUp(frames));
            }
            Ok(n) => rx.len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                arena.used += frames;
                return Ok(Received::Frames(frames));
            }
            Err(e) => {
                arena.used += frames;
                return if frames > 0 {
                    Ok(Received::Frames(frames))
                } else {
                    Err(e)
                };
            }
        }
    }
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
