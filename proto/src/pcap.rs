//! A pcap (libpcap classic format) writer (`PROTOCOLS.md` §5).
//!
//! The file starts with a 24-byte header in the writer's byte order
//! (magic 0xa1b2c3d4: microsecond timestamps), version 2.4, thiszone 0,
//! sigfigs 0, the snap length and link type 1 (Ethernet). Each frame is a
//! 16-byte record header (ts_sec, ts_usec, incl_len, orig_len) followed by
//! `incl_len` bytes. Readers detect the byte order from the magic.
//!
//! This is the crate's only I/O: it writes to any [`std::io::Write`], and
//! the caller passes the timestamp.
//!
//! ```
//! use std::time::Duration;
//! use uml_switch_proto::PcapWriter;
//!
//! let mut pcap = PcapWriter::new(Vec::new(), 65535).unwrap();
//! pcap.write_frame(Duration::from_micros(1_500_000), &[0u8; 60]).unwrap();
//! let bytes = pcap.into_inner();
//! assert_eq!(bytes.len(), 24 + 16 + 60);
//! ```

use std::io::{self, Write};
use std::time::Duration;

/// The magic number of microsecond-resolution pcap files.
pub const PCAP_MAGIC_USEC: u32 = 0xa1b2_c3d4;

/// Length of the file header.
pub const PCAP_FILE_HEADER_LEN: usize = 24;

/// Length of each record header.
pub const PCAP_RECORD_HEADER_LEN: usize = 16;

/// Link type Ethernet (`LINKTYPE_ETHERNET`).
pub const LINKTYPE_ETHERNET: u32 = 1;

/// The snap length used by tcpdump and Wireshark.
pub const DEFAULT_SNAPLEN: u32 = 262_144;

/// Writes Ethernet frames to `W` in pcap format.
///
/// Each record (header and data) is handed to `W` in one `write_all`, so a
/// reader on a pipe sees whole records. Wrap files in a
/// [`std::io::BufWriter`] and call [`flush`](Self::flush) when needed.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
    scratch: Vec<u8>,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header to `out`. Frames longer than `snaplen` are
    /// truncated to it in the capture; a `snaplen` of 0 means
    /// [`DEFAULT_SNAPLEN`].
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let snaplen = if snaplen == 0 {
            DEFAULT_SNAPLEN
        } else {
            snaplen
        };
        let mut header = [0u8; PCAP_FILE_HEADER_LEN];
        header[0..4].copy_from_slice(&PCAP_MAGIC_USEC.to_ne_bytes());
        header[4..6].copy_from_slice(&2u16.to_ne_bytes());
        header[6..8].copy_from_slice(&4u16.to_ne_bytes());
        // thiszone (8..12) and sigfigs (12..16) stay 0.
        header[16..20].copy_from_slice(&snaplen.to_ne_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter {
            out,
            snaplen,
            scratch: Vec::new(),
        })
    }

    /// The snap length in the file header.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// Appends one frame captured at `at` (time since the Unix epoch; the
    /// seconds are truncated to 32 bits as the format requires, saturating
    /// in 2106).
    pub fn write_frame(&mut self, at: Duration, frame: &[u8]) -> io::Result<()> {
        let orig_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let incl_len = orig_len.min(self.snaplen);
        let ts_sec = u32::try_from(at.as_secs()).unwrap_or(u32::MAX);
        let ts_usec = at.subsec_micros();
        self.scratch.clear();
        self.scratch.extend_from_slice(&ts_sec.to_ne_bytes());
        self.scratch.extend_from_slice(&ts_usec.to_ne_bytes());
        self.scratch.extend_from_slice(&incl_len.to_ne_bytes());
        self.scratch.extend_from_slice(&orig_len.to_ne_bytes());
        self.scratch.extend_from_slice(&frame[..incl_len as usize]);
        self.out.write_all(&self.scratch)
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Gives the underlying writer back (without flushing it).
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes(b[i..i + 4].try_into().unwrap())
    }

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes(b[i..i + 2].try_into().unwrap())
    }

    #[test]
    fn file_header() {
        let out = PcapWriter::new(Vec::new(), 65535).unwrap().into_inner();
        assert_eq!(out.len(), PCAP_FILE_HEADER_LEN);
        assert_eq!(u32_at(&out, 0), 0xa1b2_c3d4);
        assert_eq!((u16_at(&out, 4), u16_at(&out, 6)), (2, 4));
        assert_eq!((u32_at(&out, 8), u32_at(&out, 12)), (0, 0));
        assert_eq!(u32_at(&out, 16), 65535);
        assert_eq!(u32_at(&out, 20), LINKTYPE_ETHERNET);
    }

    #[test]
    fn zero_snaplen_means_default() {
        let w = PcapWriter::new(Vec::new(), 0).unwrap();
        assert_eq!(w.snaplen(), DEFAULT_SNAPLEN);
        assert_eq!(u32_at(w.get_ref(), 16), DEFAULT_SNAPLEN);
    }

    #[test]
    fn records_carry_time_and_lengths() {
        let mut w = PcapWriter::new(Vec::new(), 100).unwrap();
        let frame: Vec<u8> = (0..60).collect();
        w.write_frame(Duration::new(1_700_000_000, 123_456_789), &frame)
            .unwrap();
        w.flush().unwrap();
        let out = w.into_inner();
        let r = &out[PCAP_FILE_HEADER_LEN..];
        assert_eq!(r.len(), PCAP_RECORD_HEADER_LEN + 60);
        assert_eq!(u32_at(r, 0), 1_700_000_000);
        assert_eq!(u32_at(r, 4), 123_456);
        assert_eq!((u32_at(r, 8), u32_at(r, 12)), (60, 60));
        assert_eq!(&r[16..], &frame[..]);
    }

    #[test]
    fn long_frames_are_truncated_to_snaplen() {
        let mut w = PcapWriter::new(Vec::new(), 64).unwrap();
        w.write_frame(Duration::ZERO, &[0xab; 1514]).unwrap();
        w.write_frame(Duration::from_secs(1), &[0xcd; 14]).unwrap();
        let out = w.into_inner();
        let r = &out[PCAP_FILE_HEADER_LEN..];
        assert_eq!((u32_at(r, 8), u32_at(r, 12)), (64, 1514));
        let r2 = &r[PCAP_RECORD_HEADER_LEN + 64..];
        assert_eq!((u32_at(r2, 0), u32_at(r2, 8), u32_at(r2, 12)), (1, 14, 14));
        assert_eq!(r2.len(), PCAP_RECORD_HEADER_LEN + 14);
    }

    /// Each record reaches the writer in a single `write` call.
    #[test]
    fn one_write_per_record() {
        #[derive(Default)]
        struct Counting(Vec<usize>);
        impl Write for Counting {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.len());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = PcapWriter::new(Counting::default(), 0).unwrap();
        w.write_frame(Duration::ZERO, &[0; 60]).unwrap();
        assert_eq!(w.into_inner().0, vec![24, 76]);
    }
}
