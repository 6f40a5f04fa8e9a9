//! The few system calls the load generator needs and std does not offer:
//! `recvmmsg`/`sendmmsg` with a per-message destination address, `kill`,
//! `sysconf(_SC_CLK_TCK)`, signal masking and waiting, and the child-process
//! setup (`PR_SET_PDEATHSIG`, unblocked signals) done between fork and exec.
//!
//! This is the only module of the benches crate with `unsafe` code; every
//! block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// `sizeof(struct sockaddr_un)` on Linux.
pub const SOCKADDR_UN_LEN: usize = 110;

/// A raw 110-byte `sockaddr_un`, as carried by the daemon protocol.
pub type RawSockaddr = [u8; SOCKADDR_UN_LEN];

/// Most messages moved by one `recvmmsg`/`sendmmsg` call.
pub const MAX_BATCH: usize = 64;

/// Receive buffers for [`recv_batch`]: `count` buffers of `len` bytes each.
pub struct RecvBuffers {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl RecvBuffers {
    /// `count` (at most [`MAX_BATCH`]) buffers of `len` bytes.
    pub fn new(count: usize, len: usize) -> RecvBuffers {
        let count = count.clamp(1, MAX_BATCH);
        RecvBuffers {
            bufs: vec![vec![0u8; len]; count],
            lens: vec![0; count],
        }
    }

    /// The `i`th datagram of the last batch (truncated to the buffer size).
    pub fn get(&self, i: usize) -> &[u8] {
        let len = self.lens[i].min(self.bufs[i].len());
        &self.bufs[i][..len]
    }
}

/// Receives up to `bufs.len()` datagrams with one `recvmmsg(2)` call.
///
/// `flags` e.g. `MSG_WAITFORONE` (block, honouring `SO_RCVTIMEO`, until one
/// datagram is there, then take whatever else is queued) or `MSG_DONTWAIT`.
/// Returns the number of datagrams; their lengths are in `bufs`.
pub fn recv_batch(fd: &impl AsRawFd, bufs: &mut RecvBuffers, flags: i32) -> io::Result<usize> {
    let count = bufs.bufs.len();
    let mut iovecs: [libc::iovec; MAX_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: mmsghdr is a plain C struct of integers and pointers, for which
    // all-zero bytes are a valid value (null pointers, zero lengths).
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        iovecs[i].iov_base = bufs.bufs[i].as_mut_ptr().cast();
        iovecs[i].iov_len = bufs.bufs[i].len();
        msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs[..count]` each point to one iovec describing a live,
    // exclusively borrowed buffer of the stated length; the arrays outlive the
    // call; msg_name is null (sender address not wanted); `fd` is an open
    // socket owned by the caller for the duration of the call.
    let n = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            flags,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (len, msg) in bufs.lens.iter_mut().zip(&msgs[..n]) {
        *len = msg.msg_len as usize;
    }
    Ok(n)
}

/// Sends every frame of `frames` (at most [`MAX_BATCH`]) as its own datagram
/// to `dest` (addrlen 110) with one `sendmmsg(2)` call, as an unconnected
/// UML-like client does. Returns how many were sent (blocking sockets block
/// on the first one; `SO_SNDTIMEO` bounds that wait).
pub fn send_batch(fd: &impl AsRawFd, frames: &[&[u8]], dest: &RawSockaddr) -> io::Result<usize> {
    let count = frames.len().min(MAX_BATCH);
    let mut iovecs: [libc::iovec; MAX_BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    // SAFETY: as in recv_batch: all-zero is a valid mmsghdr.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..count {
        // The kernel only reads through these pointers (sendmmsg).
        iovecs[i].iov_base = frames[i].as_ptr().cast_mut().cast();
        iovecs[i].iov_len = frames[i].len();
        msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = dest.as_ptr().cast_mut().cast();
        msgs[i].msg_hdr.msg_namelen = SOCKADDR_UN_LEN as libc::socklen_t;
    }
    // SAFETY: `msgs[..count]` point to iovecs over live frame slices and to the
    // 110-byte address `dest`, all borrowed for the whole call; sendmmsg only
    // reads them (and writes msg_len into `msgs`, which we own).
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), count as libc::c_uint, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// One `sendto(2)` of `frame` to the 110-byte address `dest`.
pub fn send_to(fd: &impl AsRawFd, frame: &[u8], dest: &RawSockaddr) -> io::Result<usize> {
    // SAFETY: `frame` and `dest` are live borrowed buffers of the given
    // lengths for the duration of the call; sendto only reads them.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            dest.as_ptr().cast(),
            SOCKADDR_UN_LEN as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Sends signal `sig` to process `pid` (one process, never a group).
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pid"))?;
    // SAFETY: kill has no memory-safety preconditions; pid > 0 targets exactly
    // one process.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clock ticks per second, the unit of `/proc/PID/stat` CPU times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The set of signals that end a run: SIGINT, SIGTERM, SIGHUP.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain bit set; sigemptyset initialises it fully
    // before sigaddset touches it; all pointers are to this local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in the calling thread and every thread it
/// spawns afterwards, so that only [`wait_stop_signal`] sees them. Call first
/// thing in `main`.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_signals();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for one of the blocked stop signals and returns its number.
pub fn wait_stop_signal() -> io::Result<i32> {
    let set = stop_signals();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}

/// Makes a child started with `command` lose the stop-signal mask inherited
/// from us (so SIGTERM reaches it) and get SIGKILL if we die before killing
/// it ourselves (PR_SET_PDEATHSIG; spawn it from the main thread).
pub fn configure_child(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe functions sigemptyset/sigaddset (on a local),
    // pthread_sigmask and prctl; it allocates nothing and touches no locks.
    unsafe {
        command.pre_exec(|| {
            let set = stop_signals();
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether an I/O error is just a timeout / would-block / interruption.
pub fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
