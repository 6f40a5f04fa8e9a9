//! The only module of uml-switch with `unsafe` code: batched datagram
//! system calls (`recvmmsg`, `sendmmsg`) and socket buffer sizes, which
//! neither std nor socket2 offer.
//!
//! Every buffer the kernel writes into is allocated once, when a batch is
//! created, and reused for the life of the switch: nothing here allocates
//! per frame.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

/// Reusable state for receiving up to `capacity` datagrams with one
/// `recvmmsg` call, each with its source address.
pub struct RecvBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    sources: Vec<libc::sockaddr_un>,
}

// The raw pointers inside the `mmsghdr`s and `iovec`s are set at the start
// of each call and only the kernel follows them, during that call; between
// calls they dangle harmlessly and nothing reads them.

impl RecvBatch {
    /// Room for `capacity` datagrams per call.
    pub fn new(capacity: usize) -> Self {
        let (headers, iovecs) = empty_headers(capacity);
        // SAFETY: sockaddr_un is a plain C struct for which all-zero bytes
        // are a valid value.
        let zero_addr: libc::sockaddr_un = unsafe { mem::zeroed() };
        RecvBatch {
            headers,
            iovecs,
            sources: vec![zero_addr; capacity],
        }
    }

    /// The most datagrams one call receives.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Receives without blocking up to `slots.len() / slot_len` datagrams
    /// (at most [`RecvBatch::capacity`]) into consecutive `slot_len`-byte
    /// slots of `slots`. Returns how many arrived; `Ok(0)` when none was
    /// waiting. A datagram longer than a slot is cut to the slot's length
    /// (callers size slots one byte over their maximum to detect that).
    pub fn recv(
        &mut self,
        fd: BorrowedFd<'_>,
        slots: &mut [u8],
        slot_len: usize,
    ) -> io::Result<usize> {
        let count = (slots.len() / slot_len).min(self.capacity());
        if count == 0 {
            return Ok(0);
        }
        for (i, chunk) in slots.chunks_exact_mut(slot_len).take(count).enumerate() {
            self.iovecs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: slot_len,
            };
            point_header(
                &mut self.headers[i],
                &mut self.iovecs[i],
                (&mut self.sources[i] as *mut libc::sockaddr_un).cast(),
                mem::size_of::<libc::sockaddr_un>(),
            );
        }
        let received = retrying_eintr(|| {
            // SAFETY: `headers[..count]` point at `count` iovecs, each
            // covering a distinct `slot_len`-byte chunk of `slots`, and at
            // `count` sockaddr_un buffers of the size given in msg_namelen;
            // all of them outlive the call. The fd is valid (borrowed).
            unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    self.headers.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            }
        });
        match received {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// The length of datagram `i` of the last call.
    pub fn len_of(&self, i: usize) -> usize {
        self.headers[i].msg_len as usize
    }

    /// The source address of datagram `i` of the last call, as the kernel
    /// returned it (`addrlen` bytes of a `sockaddr_un`).
    pub fn source_of(&self, i: usize) -> &[u8] {
        let len =
            (self.headers[i].msg_hdr.msg_namelen as usize).min(mem::size_of::<libc::sockaddr_un>());
        // SAFETY: `sources[i]` is a live, initialised sockaddr_un (plain
        // bytes); `len` is clamped to its size.
        unsafe {
            std::slice::from_raw_parts(
                (&self.sources[i] as *const libc::sockaddr_un).cast::<u8>(),
                len,
            )
        }
    }
}

/// `capacity` blank message headers and iovecs, pointing nowhere yet.
fn empty_headers(capacity: usize) -> (Vec<libc::mmsghdr>, Vec<libc::iovec>) {
    // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are a
    // valid value (null pointers, zero lengths).
    let zero_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
    let empty_iov = libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    };
    (vec![zero_hdr; capacity], vec![empty_iov; capacity])
}

/// Points one message header at one iovec and an address buffer of
/// `name_len` bytes (null for none), with no control data.
fn point_header(
    hdr: &mut libc::mmsghdr,
    iov: &mut libc::iovec,
    name: *mut libc::c_void,
    name_len: usize,
) {
    hdr.msg_hdr.msg_name = name;
    hdr.msg_hdr.msg_namelen = name_len as libc::socklen_t;
    hdr.msg_hdr.msg_iov = iov;
    hdr.msg_hdr.msg_iovlen = 1;
    hdr.msg_hdr.msg_control = ptr::null_mut();
    hdr.msg_hdr.msg_controllen = 0;
    hdr.msg_hdr.msg_flags = 0;
    hdr.msg_len = 0;
}

/// Reusable state for sending up to `capacity` datagrams on a connected
/// socket with one `sendmmsg` call.
pub struct SendBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
}

impl SendBatch {
    /// Room for `capacity` datagrams per call.
    pub fn new(capacity: usize) -> Self {
        let (headers, iovecs) = empty_headers(capacity);
        SendBatch { headers, iovecs }
    }

    /// The most datagrams one call sends.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Sends `frames` (at most [`SendBatch::capacity`]) as one datagram
    /// each, without blocking, to the socket's connected peer. Returns how
    /// many the kernel took: fewer than given when the peer's queue filled
    /// up (the rest were not sent). An error means none was sent.
    pub fn send<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        frames: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<usize> {
        let mut count = 0;
        for frame in frames.into_iter().take(self.capacity()) {
            self.iovecs[count] = libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            count += 1;
        }
        for (hdr, iov) in self.headers.iter_mut().zip(&mut self.iovecs).take(count) {
            point_header(hdr, iov, ptr::null_mut(), 0);
        }
        if count == 0 {
            return Ok(0);
        }
        retrying_eintr(|| {
            // SAFETY: `headers[..count]` point at `count` iovecs that cover
            // the caller's frames, which are borrowed for `'a` and so
            // outlive the call; the kernel only reads them. The fd is valid.
            unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.headers.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }
        })
    }
}

/// Runs a system call that returns a count or -1, again while it is
/// interrupted by a signal.
fn retrying_eintr(mut call: impl FnMut() -> libc::c_int) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sets a socket's send and receive buffer sizes (`SO_SNDBUF`,
/// `SO_RCVBUF`); the kernel caps them at `net.core.wmem_max`/`rmem_max`.
pub fn set_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `value` is a live c_int and the length passed is its
        // size; the fd is valid (borrowed).
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `f` with the process umask set to `mask`, then restores it. The
/// umask is process-wide: only the control plane, which runs on one
/// thread, creates files.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps an integer in the process; it cannot fail.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let result = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    result
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The pid and uid of the process at the other end of a connected Unix
/// socket (`SO_PEERCRED`), which socket2 does not offer for every type.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live ucred and `len` its size; the kernel writes
    // at most `len` bytes into it. The fd is valid (borrowed).
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}

/// Registers a socket with the tokio reactor, for reading (tokio's safe
/// constructors are deprecated because they accept any `AsRawFd`).
pub fn watch_socket(
    socket: socket2::Socket,
) -> io::Result<tokio::io::unix::AsyncFd<socket2::Socket>> {
    // SAFETY: a socket2::Socket owns its descriptor: it stays open, and is
    // the same one, until the Socket is dropped, which the AsyncFd that
    // takes it over does only after deregistering it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}

/// Borrows the descriptor of a type that only offers `AsRawFd` (such as
/// `tun_tap::Iface`) for as long as the owner is borrowed.
pub fn borrow_fd<T: AsRawFd>(owner: &T) -> BorrowedFd<'_> {
    // SAFETY: `owner` keeps its descriptor open for its whole life, and the
    // returned BorrowedFd cannot outlive the borrow of `owner`.
    unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn batches_round_trip_over_a_socket_pair() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut tx = SendBatch::new(8);
        let frames: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 20 + i as usize]).collect();
        let sent = tx
            .send(a.as_fd(), frames.iter().map(Vec::as_slice))
            .unwrap();
        assert_eq!(sent, 5);
        let mut rx = RecvBatch::new(8);
        let mut slots = vec![0u8; 8 * 64];
        let got = rx.recv(b.as_fd(), &mut slots, 64).unwrap();
        assert_eq!(got, 5);
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(rx.len_of(i), frame.len());
            assert_eq!(&slots[i * 64..i * 64 + frame.len()], &frame[..]);
        }
        // Nothing more waiting: Ok(0), not an error.
        assert_eq!(rx.recv(b.as_fd(), &mut slots, 64).unwrap(), 0);
    }

    #[test]
    fn long_datagrams_are_cut_to_the_slot() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(&[7u8; 100]).unwrap();
        let mut rx = RecvBatch::new(2);
        let mut slots = vec![0u8; 2 * 33];
        assert_eq!(rx.recv(b.as_fd(), &mut slots, 33).unwrap(), 1);
        assert_eq!(rx.len_of(0), 33);
    }

    #[test]
    fn buffer_sizes_can_be_set() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        set_buffer_sizes(a.as_fd(), 1 << 20).unwrap();
    }
}
