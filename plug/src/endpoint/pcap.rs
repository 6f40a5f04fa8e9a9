//! A capture file: everything sent to this endpoint is written in pcap
//! format (tcpdump and wireshark read it); nothing comes from it.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use uml_switch_proto::PcapWriter;

use super::{FrameRx, FrameTx, Halves};
use crate::error::{open_hint, PlugError};

/// Never yields a frame: the cable ends when the other side does.
struct Silent;

impl FrameRx for Silent {
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            std::thread::park();
        }
    }
}

struct Capture(PcapWriter<BufWriter<File>>);

impl FrameTx for Capture {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.0.write_frame(now, frame)?;
        // Each frame reaches the file at once, so a capture read while the
        // cable runs (or after it is killed) is whole.
        self.0.flush()
    }
}

pub(super) fn open(text: &str, file: &Path) -> Result<Halves, PlugError> {
    let open_error = |source: io::Error| PlugError::Open {
        endpoint: text.into(),
        hint: open_hint(&source),
        source,
    };
    let out = File::create(file).map_err(open_error)?;
    let writer = PcapWriter::new(BufWriter::new(out), 262_144).map_err(open_error)?;
    Ok((Box::new(Silent), Box::new(Capture(writer))))
}
