//! Batched UDP I/O: one `recvmmsg` or `sendmmsg` system call moves up to [`BATCH`]
//! datagrams. A [`Batch`] owns its buffers and message headers; the same batch can be
//! received into and then sent from (what `rawrelay` does, without copying).

use std::io;
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 64;

/// Buffers and headers for up to [`BATCH`] datagrams of at most `slot` bytes each.
///
/// The headers point into the buffers; all of them live in heap allocations that are
/// never resized, so moving a `Batch` keeps the pointers valid.
pub struct Batch {
    buf: Vec<u8>,
    slot: usize,
    iov: Vec<libc::iovec>,
    addr: Vec<libc::sockaddr_in>,
    hdr: Vec<libc::mmsghdr>,
    /// Messages filled (pushed for sending, or received).
    len: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

// SAFETY: the raw pointers inside the headers only point into this batch's own heap
// allocations; nothing is shared with another thread.
unsafe impl Send for Batch {}

fn zero_addr() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

impl Batch {
    pub fn new(slot: usize) -> Batch {
        let mut buf = vec![0u8; slot * BATCH];
        let mut addr = vec![zero_addr(); BATCH];
        let mut iov: Vec<libc::iovec> = (0..BATCH)
            .map(|i| libc::iovec {
                // SAFETY: `i * slot` is within `buf` (BATCH * slot bytes).
                iov_base: unsafe { buf.as_mut_ptr().add(i * slot) }.cast(),
                iov_len: slot,
            })
            .collect();
        let hdr = (0..BATCH)
            .map(|i| {
                // SAFETY: msghdr is plain data; all-zero is valid (no control data).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&mut addr[i] as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = &mut iov[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Batch {
            buf,
            slot,
            iov,
            addr,
            hdr,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Append a datagram of `len` bytes to `to`; returns its buffer to fill in.
    ///
    /// Panics when the batch is full (callers flush first).
    pub fn push(&mut self, to: &libc::sockaddr_in, len: usize) -> &mut [u8] {
        assert!(self.len < BATCH && len <= self.slot, "batch overflow");
        let i = self.len;
        self.len += 1;
        self.addr[i] = *to;
        self.iov[i].iov_len = len;
        &mut self.buf[i * self.slot..i * self.slot + len]
    }

    /// The filled message `i` (after a receive: its received bytes).
    pub fn msg(&self, i: usize) -> &[u8] {
        let n = (self.iov[i].iov_len).min(self.slot);
        &self.buf[i * self.slot..i * self.slot + n]
    }

    /// Mutable access to every filled message (e.g. to stamp a send time just before
    /// sending).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut [u8])) {
        for i in 0..self.len {
            let n = self.iov[i].iov_len.min(self.slot);
            f(&mut self.buf[i * self.slot..i * self.slot + n]);
        }
    }

    /// Receive up to [`BATCH`] datagrams without blocking. `Ok(0)`: nothing queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iov[i].iov_len = self.slot;
            self.hdr[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            self.hdr[i].msg_len = 0;
        }
        // SAFETY: every header points at a live buffer of `slot` bytes and a live address.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdr.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.len = 0;
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.iov[i].iov_len = (self.hdr[i].msg_len as usize).min(self.slot);
        }
        self.len = n;
        Ok(n)
    }

    /// Point every received message at `to` (forwarding them unchanged).
    pub fn redirect_all(&mut self, to: &libc::sockaddr_in) {
        for a in &mut self.addr[..self.len] {
            *a = *to;
        }
        for h in &mut self.hdr[..self.len] {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        }
    }

    /// Send every filled message, retrying partial sends; a datagram the kernel refuses
    /// (e.g. an ICMP error queued from an earlier send) is skipped and counted. Returns
    /// (sent, failed). A full send buffer is retried a bounded number of times, then the
    /// rest is counted as failed. The batch is empty afterwards.
    pub fn send(&mut self, fd: RawFd) -> (u64, u64) {
        for h in &mut self.hdr[..self.len] {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        }
        let mut off = 0usize;
        let (mut sent, mut failed) = (0u64, 0u64);
        let mut would_block = 0u32;
        while off < self.len {
            // SAFETY: headers off..len point at live buffers and addresses.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdr.as_mut_ptr().add(off),
                    (self.len - off) as u32,
                    0,
                )
            };
            if n > 0 {
                off += n as usize;
                sent += n as u64;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if would_block < 1000 => {
                    would_block += 1;
                    std::hint::spin_loop();
                }
                io::ErrorKind::WouldBlock => {
                    failed += (self.len - off) as u64;
                    break;
                }
                _ => {
                    off += 1;
                    failed += 1;
                }
            }
        }
        self.len = 0;
        (sent, failed)
    }
}

/// Wait until one of `fds` is readable or `timeout_ns` passes (`ppoll`, nanosecond
/// timeout).
pub fn wait_readable<const N: usize>(fds: [RawFd; N], timeout_ns: u64) {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `pfds` and `ts` are live for the call; no signal mask is passed.
    unsafe { libc::ppoll(pfds.as_mut_ptr(), N as libc::nfds_t, &ts, std::ptr::null()) };
}
