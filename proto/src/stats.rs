//! Per-port counters: plain integers, bumped on the frame path and read by
//! whoever publishes them. Nothing here allocates or locks.

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the minimum frame (14 bytes), or a cut-short 802.1Q tag.
    Runt,
    /// Longer than the maximum frame.
    Oversize,
    /// Received on a port's socket from an address that is not that port's
    /// client.
    UnknownSender,
    /// The destination was learned on the port the frame came in on.
    SamePort,
    /// A flood or unicast that had nowhere to go (no other port).
    NoDestination,
    /// The destination's socket or transmit queue was full.
    QueueFull,
    /// The destination's socket returned an error other than "full".
    TxError,
}

impl DropReason {
    /// Every reason, in the order of [`PortStats::drops`].
    pub const ALL: [DropReason; 7] = [
        DropReason::Runt,
        DropReason::Oversize,
        DropReason::UnknownSender,
        DropReason::SamePort,
        DropReason::NoDestination,
        DropReason::QueueFull,
        DropReason::TxError,
    ];

    /// A short, stable name for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversize => "oversize",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::SamePort => "same_port",
            DropReason::NoDestination => "no_destination",
            DropReason::QueueFull => "queue_full",
            DropReason::TxError => "tx_error",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received from this port's client, valid or not.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames handed to this port's socket successfully.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Drops, indexed like [`DropReason::ALL`]. Receive-side reasons
    /// (runt, oversize, unknown sender, same port, no destination) count on
    /// the ingress port; transmit-side reasons (queue full, tx error) count
    /// on the port that could not take the frame.
    pub drops: [u64; DropReason::ALL.len()],
}

impl PortStats {
    /// Counts a received frame of `len` bytes.
    pub fn record_rx(&mut self, len: usize) {
        self.rx_frames += 1;
        self.rx_bytes += len as u64;
    }

    /// Counts a transmitted frame of `len` bytes.
    pub fn record_tx(&mut self, len: usize) {
        self.tx_frames += 1;
        self.tx_bytes += len as u64;
    }

    /// Counts `n` drops for `reason`.
    pub fn record_drops(&mut self, reason: DropReason, n: u64) {
        self.drops[reason.index()] += n;
    }

    /// Adds `other`'s counts to these (one port counted in several places).
    pub fn merge(&mut self, other: &PortStats) {
        self.rx_frames += other.rx_frames;
        self.rx_bytes += other.rx_bytes;
        self.tx_frames += other.tx_frames;
        self.tx_bytes += other.tx_bytes;
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops) {
            *mine += theirs;
        }
    }

    /// A short summary for logs: frames each way and drops by reason.
    pub fn summary(&self) -> String {
        let mut text = format!("rx {} frames, tx {} frames", self.rx_frames, self.tx_frames);
        for reason in DropReason::ALL {
            let n = self.drops_for(reason);
            if n > 0 {
                text.push_str(&format!(", {} {}", n, reason.as_str()));
            }
        }
        text
    }

    /// The number of drops for `reason`.
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// All drops, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}
