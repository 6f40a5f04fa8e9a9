//! Byte streams carrying frames in vde_plug's framing (a 2-byte big-endian
//! length, then the frame, each record in one write): stdin/stdout, or a
//! child process's (`cmd://`), which is how `ssh host uml-plug ...` cables
//! two machines.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use uml_switch_proto::wire::{encode_record, RecordDecoder};
use uml_switch_proto::MAX_FRAME_LEN;

use super::{FrameRx, FrameTx, Halves};
use crate::error::{open_hint, PlugError};

/// Reads records from a byte stream.
struct RecordRx<R> {
    input: R,
    decoder: RecordDecoder,
    chunk: Vec<u8>,
    /// Keeps a child alive (and kills it) as long as the reader lives.
    _child: Option<Arc<ChildGuard>>,
}

impl<R: Read + Send> FrameRx for RecordRx<R> {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.decoder.next_record() {
                Some(Ok(frame)) => {
                    let len = frame.len().min(buf.len());
                    buf[..len].copy_from_slice(&frame[..len]);
                    return Ok(Some(len));
                }
                Some(Err(e)) => {
                    // Counted by the decoder, which resynchronises.
                    eprintln!("uml-plug: {e}; skipping to the next read");
                }
                None => {}
            }
            let n = self.input.read(&mut self.chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.chunk[..n]);
        }
    }
}

/// Writes records to a byte stream, one write each.
struct RecordTx<W> {
    output: W,
    record: Vec<u8>,
    _child: Option<Arc<ChildGuard>>,
}

impl<W: Write + Send> FrameTx for RecordTx<W> {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.record.clear();
        encode_record(frame, &mut self.record);
        self.output.write_all(&self.record)?;
        self.output.flush()
    }
}

fn reader<R: Read + Send + 'static>(input: R, child: Option<Arc<ChildGuard>>) -> Box<dyn FrameRx> {
    Box::new(RecordRx {
        input,
        decoder: RecordDecoder::new(MAX_FRAME_LEN),
        chunk: vec![0; 64 * 1024],
        _child: child,
    })
}

fn writer<W: Write + Send + 'static>(
    output: W,
    child: Option<Arc<ChildGuard>>,
) -> Box<dyn FrameTx> {
    Box::new(RecordTx {
        output,
        record: Vec::with_capacity(MAX_FRAME_LEN + 2),
        _child: child,
    })
}

/// stdin/stdout.
pub(super) fn open_stdio() -> Halves {
    (reader(io::stdin(), None), writer(io::stdout(), None))
}

/// Kills the child (by its PID) when the last half is dropped.
struct ChildGuard(Mutex<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(mut child) = self.0.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process run with `sh -c COMMAND`.
pub(super) fn open_command(text: &str, command: &str) -> Result<Halves, PlugError> {
    let mut child = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| PlugError::Open {
            endpoint: text.into(),
            hint: open_hint(&source),
            source,
        })?;
    let stdin: ChildStdin = child.stdin.take().expect("piped stdin");
    let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
    // The child's end shows as EOF on its stdout.
    let guard = Arc::new(ChildGuard(Mutex::new(child)));
    Ok((
        reader(stdout, Some(guard.clone())),
        writer(stdin, Some(guard)),
    ))
}
