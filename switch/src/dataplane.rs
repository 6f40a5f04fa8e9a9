//! The data plane: one thread that owns the forwarding core, every port's
//! socket and the frame buffers.
//!
//! Each turn of its loop:
//! 1. waits (epoll, through mio) until a port is readable or the control
//!    plane has a message;
//! 2. applies control messages (add or remove a port) while no frame is in
//!    flight;
//! 3. receives a batch from each readable port (`recvmmsg` for sockets)
//!    into a fixed arena of frame slots, and runs [`Switch::ingress`] over
//!    it, queueing slot numbers on the destination ports;
//! 4. flushes every port's queue with one `sendmmsg` (non-blocking: a full
//!    client loses the frames it cannot take, counted, and nobody waits).
//!
//! Ports that still had data after their batch are visited again on the
//! next turn without sleeping, so one busy port cannot starve the others.
//! Nothing on this path allocates or takes a lock.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use uml_switch_proto::wire::SockaddrUn;
use uml_switch_proto::{
    DropReason, PortId, PortStats, Switch, SwitchConfig, SwitchError, Timestamp, Verdict,
    MAX_FRAME_LEN,
};

use crate::sys::{RecvBatch, SendBatch};

/// Bytes per frame slot: one more than the largest frame, so that a longer
/// datagram shows up as oversize instead of silently fitting.
const SLOT_LEN: usize = (MAX_FRAME_LEN + 1).next_multiple_of(64);
/// Frame slots in the arena: the most frames in flight in one turn.
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
    /// The forwarding core refused the number.
    #[error(transparent)]
    Switch(SwitchError),
    /// epoll would not watch the port's descriptor.
    #[error("cannot watch its descriptor: {0}")]
    Watch(io::Error),
}

/// Messages from the control plane.
pub enum ControlMsg {
    /// Attach a port. `port: None` takes the first free number.
    AddPort {
        port: Option<PortId>,
        io: PortIo,
        info: PortInfo,
        reply: oneshot::Sender<Result<PortId, AddPortError>>,
    },
    /// Detach a port (its client hung up).
    RemovePort { port: PortId },
    /// Send a copy of the counters of every port.
    Snapshot {
        reply: oneshot::Sender<Vec<(PortId, PortInfo, PortStats)>>,
    },
    /// Stop the thread.
    Shutdown,
}

/// The control plane's end: sends messages and wakes the data plane.
#[derive(Clone)]
pub struct DataplaneHandle {
    tx: mpsc::Sender<ControlMsg>,
    waker: Arc<Waker>,
}

impl DataplaneHandle {
    /// Sends `msg`; fails only if the data plane has stopped.
    pub fn send(&self, msg: ControlMsg) -> io::Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the data plane has stopped"))?;
        self.waker.wake()
    }

    /// Attaches a port and waits for its number.
    pub async fn add_port(
        &self,
        port: Option<PortId>,
        io: PortIo,
        info: PortInfo,
    ) -> io::Result<Result<PortId, AddPortError>> {
        let (reply, answer) = oneshot::channel();
        self.send(ControlMsg::AddPort {
            port,
            io,
            info,
            reply,
        })?;
        answer
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the data plane has stopped"))
    }
}

/// Starts the data-plane thread.
pub fn spawn(config: SwitchConfig) -> io::Result<(DataplaneHandle, thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("dataplane".into())
        .spawn(move || Dataplane::new(poll, rx, config).run())?;
    Ok((DataplaneHandle { tx, waker }, thread))
}

struct Port {
    io: PortIo,
    info: PortInfo,
    /// Arena slots waiting to be sent to this port, in order.
    tx_queue: Vec<u16>,
    /// True while the port sits in `Dataplane::readable`.
    in_readable: bool,
}

/// Fixed frame slots, reused every turn.
struct FrameArena {
    bytes: Vec<u8>,
    lens: Vec<u32>,
    used: usize,
}

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

struct Dataplane {
    poll: Poll,
    control: mpsc::Receiver<ControlMsg>,
    switch: Switch,
    ports: Vec<Option<Port>>,
    arena: FrameArena,
    rx_batch: RecvBatch,
    tx_batch: SendBatch,
    /// Ports that may have more to read.
    readable: VecDeque<PortId>,
    /// Ports with a non-empty transmit queue.
    pending_tx: Vec<PortId>,
    epoch: Instant,
    running: bool,
}

impl Dataplane {
    fn new(poll: Poll, control: mpsc::Receiver<ControlMsg>, config: SwitchConfig) -> Self {
        let max_ports = config.max_ports as usize;
        Dataplane {
            poll,
            control,
            switch: Switch::new(config),
            ports: (0..max_ports).map(|_| None).collect(),
            arena: FrameArena::new(),
            rx_batch: RecvBatch::new(RX_BATCH),
            tx_batch: SendBatch::new(TX_BATCH),
            readable: VecDeque::with_capacity(max_ports),
            pending_tx: Vec::with_capacity(max_ports),
            epoch: Instant::now(),
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
            self.handle_control();
            self.receive_round();
            self.flush();
            if Instant::now() >= next_housekeeping {
                let now = self.now();
                self.switch.expire(now);
                next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
            }
        }
        for id in 0..self.ports.len() {
            self.remove_port(PortId(id as u32));
        }
    }

    fn mark_readable(&mut self, id: PortId) {
        if let Some(Some(port)) = self.ports.get_mut(id.index()) {
            if !port.in_readable {
                port.in_readable = true;
                self.readable.push_back(id);
            }
        }
    }

    fn handle_control(&mut self) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                ControlMsg::AddPort {
                    port,
                    io,
                    info,
                    reply,
                } => {
                    let result = self.add_port(port, io, info);
                    let _ = reply.send(result);
                }
                ControlMsg::RemovePort { port } => self.remove_port(port),
                ControlMsg::Snapshot { reply } => {
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
                ControlMsg::Shutdown => self.running = false,
            }
        }
    }

    fn add_port(
        &mut self,
        port: Option<PortId>,
        io: PortIo,
        info: PortInfo,
    ) -> Result<PortId, AddPortError> {
        let max = self.switch.config().max_ports;
        let id = match port {
            Some(id) => id,
            None => self
                .switch
                .first_free_port()
                .ok_or(AddPortError::Switch(SwitchError::NoFreePort { max }))?,
        };
        self.switch.add_port(id).map_err(AddPortError::Switch)?;
        let raw = io.fd().as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&raw),
            Token(id.index()),
            Interest::READABLE,
        ) {
            self.switch.remove_port(id);
            return Err(AddPortError::Watch(e));
        }
        info!(port = id.0, transport = info.transport, peer = %info.peer, description = %info.description, "port connected");
        self.ports[id.index()] = Some(Port {
            io,
            info,
            tx_queue: Vec::with_capacity(ARENA_SLOTS),
            in_readable: false,
        });
        // Frames may have arrived before the registration.
        self.mark_readable(id);
        Ok(id)
    }

    fn remove_port(&mut self, id: PortId) {
        let Some(port) = self.ports.get_mut(id.index()).and_then(Option::take) else {
            return;
        };
        let raw = port.io.fd().as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        let stats = self.switch.remove_port(id).unwrap_or_default();
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter(|&&r| stats.drops_for(r) > 0)
            .map(|&r| format!("{}={}", r.as_str(), stats.drops_for(r)))
            .collect();
        info!(
            port = id.0,
            transport = port.info.transport,
            peer = %port.info.peer,
            rx_frames = stats.rx_frames,
            tx_frames = stats.tx_frames,
            drops = %drops.join(","),
            "port disconnected"
        );
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
            let received = match receive(port, &mut self.rx_batch, &mut self.arena, limit) {
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
        let Dataplane {
            switch,
            ports,
            arena,
            pending_tx,
            ..
        } = self;
        if arena.lens[usize::from(slot)] == u32::MAX {
            // Marked by `receive`: not from the port's client.
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

    /// Sends every queued frame, then frees the arena.
    fn flush(&mut self) {
        let Dataplane {
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
                let result = match &port.io {
                    PortIo::Datagram { socket, .. } => {
                        tx_batch.send(socket.as_fd(), chunk.iter().map(|&s| arena.frame(s)))
                    }
                    PortIo::Tap(iface) => send_tap(iface, chunk.iter().map(|&s| arena.frame(s))),
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
}

/// Receives up to `limit` frames from `port` into the arena; returns how
/// many slots were used. A frame from a stranger keeps its slot, marked
/// with length `u32::MAX`, so that the caller counts it.
fn receive(
    port: &mut Port,
    rx_batch: &mut RecvBatch,
    arena: &mut FrameArena,
    limit: usize,
) -> io::Result<usize> {
    let first = arena.used;
    let region = &mut arena.bytes[first * SLOT_LEN..(first + limit) * SLOT_LEN];
    let received = match &port.io {
        PortIo::Datagram { socket, client } => {
            let n = rx_batch.recv(socket.as_fd(), region, SLOT_LEN)?;
            for i in 0..n {
                arena.lens[first + i] = if client.matches_received(rx_batch.source_of(i)) {
                    rx_batch.len_of(i) as u32
                } else {
                    u32::MAX
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
