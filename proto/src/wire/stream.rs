//! vde_plug's stdio stream framing (`PROTOCOLS.md` §4).
//!
//! `vde_plug URL` (and `dpipe`, `cmd://`) carry frames over a byte stream as
//! records: a **2-byte big-endian length** followed by that many bytes of
//! Ethernet frame. vde_plug's reader skips records of length 0, and on a
//! length above its maximum reports an error and drops the rest of that
//! read. A payload split across reads is reassembled.
//!
//! A length prefix split across two writes desynchronises vde_plug, so a
//! writer must emit each record as one contiguous buffer: [`encode_record`]
//! appends exactly one such buffer.
//!
//! ```
//! use uml_switch_proto::wire::{encode_record, RecordDecoder};
//!
//! let mut wire = Vec::new();
//! encode_record(&[1, 2, 3], &mut wire);
//! assert_eq!(wire, [0, 3, 1, 2, 3]);
//!
//! let mut dec = RecordDecoder::new(9234);
//! dec.push(&wire[..2]);
//! assert!(dec.next_record().is_none()); // need more bytes
//! dec.push(&wire[2..]);
//! assert_eq!(dec.next_record().unwrap().unwrap(), vec![1, 2, 3]);
//! ```

/// Size of the length prefix.
pub const RECORD_HEADER_LEN: usize = 2;

/// The largest frame a record can carry (the length prefix is 16 bits).
pub const MAX_RECORD_LEN: usize = u16::MAX as usize;

/// Appends one record (2-byte big-endian length, then `frame`) to `out`.
///
/// # Panics
///
/// If `frame` is longer than [`MAX_RECORD_LEN`] (65,535) bytes.
pub fn encode_record(frame: &[u8], out: &mut Vec<u8>) {
    let len = u16::try_from(frame.len()).unwrap_or_else(|_| {
        panic!(
            "stream record of {} bytes exceeds the 16-bit length prefix (max {MAX_RECORD_LEN})",
            frame.len()
        )
    });
    out.reserve(RECORD_HEADER_LEN + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
}

/// A stream record the decoder rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The length prefix announces more than the decoder's maximum.
    #[error(
        "stream record announces {len} bytes, more than the maximum of {max}: \
         the peer sends larger frames (raise the maximum frame size) or does not \
         speak vde_plug framing (2-byte big-endian length + frame); \
         the rest of the read was discarded to resynchronise"
    )]
    Oversize {
        /// The announced length.
        len: usize,
        /// The decoder's maximum.
        max: usize,
    },
}

/// Counters of a [`RecordDecoder`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Records returned as frames by [`RecordDecoder::next_record`].
    pub records: u64,
    /// Records of length 0, skipped silently (vde_plug does the same).
    pub zero_length_skipped: u64,
    /// Records whose length exceeded the maximum (one per
    /// [`RecordError::Oversize`] returned).
    pub oversize: u64,
    /// Bytes thrown away when resynchronising after an oversize record,
    /// counting the offending length prefix.
    pub bytes_discarded: u64,
}

/// Incremental decoder of vde_plug stream records.
///
/// Feed it whatever each read returned with [`push`](Self::push), then call
/// [`next_record`](Self::next_record) until it returns `None`. Its buffer
/// then holds at most one partial record (at most `max_len + 1` bytes), so
/// memory stays bounded as long as the caller drains after each push.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    buf: Vec<u8>,
    /// Start of the undecoded bytes in `buf`.
    pos: usize,
    max_len: usize,
    stats: RecordStats,
}

impl RecordDecoder {
    /// A decoder that accepts frames of up to `max_len` bytes (vde_plug:
    /// 1521 in the old library, 9234 in vdeplug4). Values above
    /// [`MAX_RECORD_LEN`] behave like [`MAX_RECORD_LEN`].
    pub fn new(max_len: usize) -> Self {
        RecordDecoder {
            buf: Vec::new(),
            pos: 0,
            max_len,
            stats: RecordStats::default(),
        }
    }

    /// The maximum frame length this decoder accepts.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Appends the bytes one read returned.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            // Compact: keep only the undecoded tail.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, or an error, or `None` when more bytes are
    /// needed.
    ///
    /// Records of length 0 are skipped and counted. A length above the
    /// maximum yields [`RecordError::Oversize`] once and discards everything
    /// buffered (the rest of that read), as vde_plug does; decoding resumes
    /// with the next [`push`](Self::push).
    pub fn next_record(&mut self) -> Option<Result<Vec<u8>, RecordError>> {
        loop {
            let rest = &self.buf[self.pos..];
            if rest.len() < RECORD_HEADER_LEN {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            if len == 0 {
                self.pos += RECORD_HEADER_LEN;
                self.stats.zero_length_skipped += 1;
                continue;
            }
            if len > self.max_len {
                self.stats.oversize += 1;
                self.stats.bytes_discarded += rest.len() as u64;
                self.buf.clear();
                self.pos = 0;
                return Some(Err(RecordError::Oversize {
                    len,
                    max: self.max_len,
                }));
            }
            if rest.len() < RECORD_HEADER_LEN + len {
                return None;
            }
            let start = self.pos + RECORD_HEADER_LEN;
            let frame = self.buf[start..start + len].to_vec();
            self.pos = start + len;
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
            }
            self.stats.records += 1;
            return Some(Ok(frame));
        }
    }

    /// Bytes buffered but not yet returned (a partial record). Non-zero at
    /// end of stream means the peer stopped mid-record.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The decoder's counters.
    pub fn stats(&self) -> &RecordStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(dec: &mut RecordDecoder) -> Vec<Result<Vec<u8>, RecordError>> {
        std::iter::from_fn(|| dec.next_record()).collect()
    }

    #[test]
    fn encode_prefixes_big_endian_length() {
        let mut out = vec![0xee];
        encode_record(&[0xaa; 0x0102], &mut out);
        assert_eq!(&out[..3], &[0xee, 0x01, 0x02]);
        assert_eq!(out.len(), 1 + 2 + 0x0102);
    }

    #[test]
    fn encode_accepts_the_largest_record() {
        let mut out = Vec::new();
        encode_record(&vec![0; MAX_RECORD_LEN], &mut out);
        assert_eq!(&out[..2], &[0xff, 0xff]);
    }

    #[test]
    #[should_panic(expected = "exceeds the 16-bit length prefix")]
    fn encode_rejects_records_over_65535() {
        encode_record(&vec![0; MAX_RECORD_LEN + 1], &mut Vec::new());
    }

    #[test]
    fn decodes_several_records_in_one_push() {
        let mut wire = Vec::new();
        encode_record(&[1; 60], &mut wire);
        encode_record(&[2; 1514], &mut wire);
        let mut dec = RecordDecoder::new(9234);
        dec.push(&wire);
        assert_eq!(drain(&mut dec), vec![Ok(vec![1; 60]), Ok(vec![2; 1514])]);
        assert_eq!(dec.stats().records, 2);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn reassembles_records_split_at_every_byte() {
        let mut wire = Vec::new();
        encode_record(&[7; 20], &mut wire);
        for split in 0..wire.len() {
            let mut dec = RecordDecoder::new(1518);
            dec.push(&wire[..split]);
            assert_eq!(dec.next_record(), None, "split at {split}");
            dec.push(&wire[split..]);
            assert_eq!(dec.next_record(), Some(Ok(vec![7; 20])));
            assert_eq!(dec.next_record(), None);
        }
    }

    #[test]
    fn zero_length_records_are_skipped_and_counted() {
        let mut wire = vec![0, 0, 0, 0];
        encode_record(&[9; 14], &mut wire);
        wire.extend_from_slice(&[0, 0]);
        let mut dec = RecordDecoder::new(1518);
        dec.push(&wire);
        assert_eq!(drain(&mut dec), vec![Ok(vec![9; 14])]);
        assert_eq!(dec.stats().zero_length_skipped, 3);
        assert_eq!(dec.stats().records, 1);
    }

    #[test]
    fn max_len_is_inclusive() {
        let mut wire = Vec::new();
        encode_record(&[1; 1518], &mut wire);
        let mut dec = RecordDecoder::new(1518);
        dec.push(&wire);
        assert_eq!(dec.next_record(), Some(Ok(vec![1; 1518])));
    }

    #[test]
    fn oversize_errors_once_then_resynchronises_on_the_next_read() {
        let mut read1 = Vec::new();
        encode_record(&[1; 60], &mut read1); // good record before the bad one
        read1.extend_from_slice(&[0x05, 0xf3]); // 1523 > 1518
        read1.extend_from_slice(&[0xab; 100]); // rest of that read
        let mut dec = RecordDecoder::new(1518);
        dec.push(&read1);
        let got = drain(&mut dec);
        assert_eq!(
            got,
            vec![
                Ok(vec![1; 60]),
                Err(RecordError::Oversize {
                    len: 1523,
                    max: 1518
                })
            ]
        );
        assert_eq!(dec.stats().oversize, 1);
        assert_eq!(dec.stats().bytes_discarded, 102);
        assert_eq!(dec.buffered(), 0);

        let mut read2 = Vec::new();
        encode_record(&[2; 64], &mut read2);
        dec.push(&read2);
        assert_eq!(drain(&mut dec), vec![Ok(vec![2; 64])]);
        assert_eq!(dec.stats().records, 2);
    }

    #[test]
    fn oversize_message_says_what_to_do() {
        let msg = RecordError::Oversize {
            len: 9000,
            max: 1518,
        }
        .to_string();
        assert!(msg.contains("9000") && msg.contains("1518"), "{msg}");
        assert!(msg.contains("raise the maximum"), "{msg}");
    }

    #[test]
    fn buffer_is_compacted_across_pushes() {
        let mut rec = Vec::new();
        encode_record(&[3; 100], &mut rec);
        let mut dec = RecordDecoder::new(1518);
        for _ in 0..1000 {
            dec.push(&rec[..50]);
            assert_eq!(dec.next_record(), None);
            dec.push(&rec[50..]);
            assert!(dec.next_record().is_some());
        }
        assert!(dec.buf.capacity() < 4 * rec.len(), "{}", dec.buf.capacity());
    }

    proptest! {
        #[test]
        fn round_trip_under_arbitrary_chunking(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                encode_record(f, &mut wire);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut dec = RecordDecoder::new(300);
            let mut got = Vec::new();
            for w in cuts.windows(2) {
                dec.push(&wire[w[0]..w[1]]);
                got.extend(drain(&mut dec));
            }
            let want: Vec<_> = frames.iter().filter(|f| !f.is_empty()).cloned().map(Ok).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(dec.buffered(), 0);
            let zeros = frames.iter().filter(|f| f.is_empty()).count() as u64;
            prop_assert_eq!(dec.stats().zero_length_skipped, zeros);
        }

        #[test]
        fn decoder_never_panics_and_stays_bounded(
            reads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..30),
        ) {
            let mut dec = RecordDecoder::new(64);
            for r in &reads {
                dec.push(r);
                for f in std::iter::from_fn(|| dec.next_record()).flatten() {
                    prop_assert!(!f.is_empty() && f.len() <= 64);
                }
                prop_assert!(dec.buffered() <= 64 + 1);
            }
        }
    }
}
