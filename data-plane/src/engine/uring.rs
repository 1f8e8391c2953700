//! The io_uring engine: one ring per worker core, a multishot `RecvMsg` per socket
//! drawing from a provided-buffer ring, and a `SendMsg` of the very same buffer when
//! [`CoreState::on_datagram`] says to forward. No datagram is copied.
//!
//! # Driving
//!
//! [`setup`] runs on the starting thread (so setup errors surface at start): it creates
//! the ring, maps and registers the buffers, and creates the wake-up eventfd. The
//! [`Waker`] stays with the RPC thread; the [`Ring`] moves to the pinned worker thread,
//! where [`run`] enables it (on 6.1+ kernels the ring is single-issuer with deferred
//! task work, so that thread becomes its only submitter) and loops:
//!
//! 1. hand recycled buffers back to the kernel, then queue the receives to (re)arm, the
//!    cancels of removed sockets and the wake-up read;
//! 2. submit everything queued and wait for at least one completion (one syscall);
//! 3. read the clock once, then handle every completion available: a datagram goes
//!    through [`CoreState::on_datagram`] and is either sent from its buffer or its buffer
//!    is recycled; a send completion recycles its buffer; the wake-up read drains the
//!    command queue.
//!
//! # Ownership: who keeps what alive until the kernel is done with it
//!
//! - **Receive buffers** (`BUFFERS` × `BUFFER_SIZE`, one mapping owned by [`Ring`]).
//!   At any moment a buffer id is in exactly one place: in the buffer ring (the
//!   kernel's to fill), handed to us by a receive completion (only while that
//!   completion is handled), or lent to one `SendMsg` in flight. It returns to the ring
//!   on that send's completion, or at once when the datagram is not forwarded. The
//!   ring has as many entries as there are buffers, so recycling never overwrites an
//!   entry the kernel has yet to consume.
//! - **Send slots** (a `msghdr`, an `iovec` and the destination address per buffer id,
//!   one mapping owned by [`Ring`]). Slot *n* belongs to buffer *n*: it is written when
//!   buffer *n* is lent to a send and read by the kernel until that send completes.
//! - **The receive `msghdr`** (the kernel reads only its lengths) and the eventfd read's
//!   8-byte target: one mapping owned by [`Ring`], valid for the whole run.
//! - **Memory outlives the ring.** [`Ring`] closes the io_uring before unmapping, and
//!   unmaps only if [`run`] saw every operation it submitted complete. If the loop dies
//!   on a ring error with operations in flight, the mappings are leaked rather than
//!   freed under the kernel.
//! - **File descriptors.** Sockets belong to [`CoreState`]. A removed socket is closed
//!   ([`CoreState::release`]) only once its multishot receive has posted its final
//!   completion, its cancel has completed and no send from it is in flight. Until then
//!   its token is not reused, so no queued submission and no completion can name a
//!   closed descriptor or a recycled token. The eventfd is shared by [`Ring`] and
//!   [`Waker`] through an `Arc`, so a late `wake()` never writes to a reused number.
//!
//! # `user_data`
//!
//! A closed set of operations, `Op`: the top byte names the kind (`Op::RECV`,
//! `Op::SEND`, `Op::WAKE`, `Op::CANCEL`; 0 is reserved and never submitted), the low
//! 56 bits carry the operand (a socket token, or a buffer id which is also the send
//! slot). There is one receive per socket and one wake-up read at a time, so the
//! encoding names every operation in flight uniquely.

use std::fs::File;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use io_uring::{IoUring, Probe, Submitter, cqueue, opcode, squeue, types};
use tracing::{debug, error, warn};

use super::core::{Applied, CoreCommand, CoreState, Send as Forward, Token};
use crate::clock;
use crate::proto::relay::DropReason;

/// Receive buffers per core: a power of two (the ring index mask), at most 32768.
const BUFFERS: u16 = 4096;

/// Bytes per receive buffer: the `io_uring_recvmsg_out` header (16), the source
/// address (`NAME_LEN`) and the datagram, which thus may be up to 2004 bytes: any
/// RTP/RTCP datagram on a 1500-byte MTU fits. A larger one arrives truncated and is
/// dropped as malformed.
const BUFFER_SIZE: usize = 2048;

/// The provided-buffer group every receive selects from.
const BUFFER_GROUP: u16 = 0;

/// Room for the source address in each buffer: a `sockaddr_in6` (a `sockaddr_in` is
/// smaller). Media sockets are IPv4 or IPv6-only, never dual-stack.
const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();

/// Submission queue entries. A full queue is flushed mid-batch, so this bounds no
/// traffic, only syscalls per batch.
const SQ_ENTRIES: u32 = 1024;

/// Completion queue entries: room for a receive and a send completion per buffer,
/// plus the odd error, cancel and wake-up. The kernel keeps overflow (FEAT_NODROP).
const CQ_ENTRIES: u32 = 4 * BUFFERS as u32;

/// Consecutive failed receives (other than "no buffer" and our own cancels) after
/// which a socket is no longer re-armed, so that a socket which only fails cannot spin
/// the core.
const MAX_RECV_ERRORS: u32 = 64;

/// Cancels sent for one removed socket's receive. A cancel that finds nothing means the
/// receive has ended and its final completion is on its way; the retries only cover a
/// receive caught between two issue attempts.
const MAX_CANCELS: u8 = 4;

const _: () = assert!(BUFFERS.is_power_of_two() && BUFFERS <= 32768);
const _: () = assert!(BUFFER_SIZE > 16 + NAME_LEN + 1500);

/// What a submission is, carried through the kernel in its `user_data`.
///
/// Layout: bits 63..56 are the kind (the `RECV`.. `CANCEL` constants), bits 55..0 the
/// operand. Kind 0 (`NONE`) is reserved and never submitted, so a zeroed or foreign
/// `user_data` decodes to nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// The multishot `RecvMsg` of socket `Token` (at most one per socket).
    Recv(Token),
    /// The `SendMsg` of buffer `u16`, described by send slot `u16`.
    Send(u16),
    /// The `Read` of the wake-up eventfd (at most one).
    Wake,
    /// The `AsyncCancel` of `Recv(Token)` (at most one per socket).
    Cancel(Token),
}

impl Op {
    const KIND_SHIFT: u32 = 56;
    const OPERAND_MASK: u64 = (1 << Self::KIND_SHIFT) - 1;
    /// Reserved: never submitted.
    const NONE: u64 = 0;
    const RECV: u64 = 1;
    const SEND: u64 = 2;
    const WAKE: u64 = 3;
    const CANCEL: u64 = 4;

    fn encode(self) -> u64 {
        let (kind, operand) = match self {
            Op::Recv(token) => (Self::RECV, token as u64),
            Op::Send(bid) => (Self::SEND, u64::from(bid)),
            Op::Wake => (Self::WAKE, 0),
            Op::Cancel(token) => (Self::CANCEL, token as u64),
        };
        // Tokens index the core's socket table: they stay far below 2^56.
        debug_assert!(operand <= Self::OPERAND_MASK);
        (kind << Self::KIND_SHIFT) | (operand & Self::OPERAND_MASK)
    }

    fn decode(user_data: u64) -> Option<Op> {
        let operand = user_data & Self::OPERAND_MASK;
        match user_data >> Self::KIND_SHIFT {
            Self::NONE => None,
            Self::RECV => usize::try_from(operand).ok().map(Op::Recv),
            Self::SEND => u16::try_from(operand).ok().map(Op::Send),
            Self::WAKE if operand == 0 => Some(Op::Wake),
            Self::CANCEL => usize::try_from(operand).ok().map(Op::Cancel),
            _ => None,
        }
    }
}

/// An anonymous, page-aligned, zero-filled mapping shared with the kernel. It is only
/// ever accessed through raw pointers (or short-lived slices while we own the bytes),
/// never through a long-lived Rust reference the kernel could write behind.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> io::Result<Mmap> {
        // SAFETY: a fresh anonymous private mapping aliases nothing; the kernel picks
        // the address. MAP_POPULATE faults the pages in now rather than on the packet
        // path.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned address 0"))?;
        Ok(Mmap { ptr, len })
    }

    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created, once. Owners drop an Mmap
        // only when the kernel no longer uses it (see `Ring`'s Drop and `probe`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: an Mmap owns its mapping exclusively, like a `Box<[u8]>`; nothing in it is
// tied to the thread that created it.
unsafe impl Send for Mmap {}

/// `struct io_uring_buf`: one entry of a provided-buffer ring. In entry 0, `resv` is the
/// ring's tail (`struct io_uring_buf_ring`), which we write and the kernel reads.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(size_of::<RawBuf>() == size_of::<types::BufRingEntry>());

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING) and its buffers.
struct BufRing {
    /// `count` entries, read by the kernel once registered.
    entries: Mmap,
    /// `count` buffers of `size` bytes.
    buffers: Mmap,
    count: u16,
    size: usize,
    /// Our tail: entries before it are the kernel's once published.
    tail: u16,
    /// The tail the kernel has seen.
    published: u16,
}

impl BufRing {
    fn new(count: u16, size: usize) -> io::Result<BufRing> {
        debug_assert!(count.is_power_of_two());
        Ok(BufRing {
            entries: Mmap::new(usize::from(count) * size_of::<RawBuf>())?,
            buffers: Mmap::new(usize::from(count) * size)?,
            count,
            size,
            tail: 0,
            published: 0,
        })
    }

    /// Register the ring as buffer group `group` and give the kernel every buffer.
    ///
    /// # Safety
    ///
    /// `self` must stay mapped until `submitter`'s ring is closed (or the group
    /// unregistered) and no operation that may select one of its buffers is in flight.
    unsafe fn register(&mut self, submitter: &Submitter<'_>, group: u16) -> io::Result<()> {
        // SAFETY: `entries` is page-aligned (mmap) and holds `count` entries; the caller
        // keeps it mapped for as long as the kernel may read it.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.count,
                group,
                0,
            )?
        };
        for bid in 0..self.count {
            self.recycle(bid);
        }
        self.publish();
        Ok(())
    }

    fn buffer_ptr(&self, bid: u16) -> *mut u8 {
        // Address arithmetic only; in bounds for every `bid < count`.
        self.buffers
            .as_ptr()
            .wrapping_add(usize::from(bid) * self.size)
    }

    /// Queue buffer `bid` for the kernel (visible at the next [`BufRing::publish`]).
    /// The caller owns the buffer: a completion handed it over and nothing uses it now.
    fn recycle(&mut self, bid: u16) {
        if bid >= self.count {
            warn!(bid, "not recycling a buffer id outside the ring");
            return;
        }
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.buffer_ptr(bid) as u64;
        // SAFETY: `index < count`, so the entry lies inside `entries`. It is at or past
        // the published tail, so the kernel reads it only after `publish`; and as each
        // buffer is in the ring at most once, it holds no entry the kernel has yet to
        // consume. Field-wise writes leave `resv` alone: in entry 0 it is the tail.
        unsafe {
            let entry = self.entries.as_ptr().cast::<RawBuf>().add(index);
            (&raw mut (*entry).addr).write(addr);
            (&raw mut (*entry).len).write(self.size as u32);
            (&raw mut (*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Hand every recycled buffer to the kernel; whether there were any.
    fn publish(&mut self) -> bool {
        if self.tail == self.published {
            return false;
        }
        // SAFETY: the ring's tail is entry 0's `resv`, a 2-aligned u16 inside our
        // mapping; we are its only writer and write it only atomically, the kernel
        // reads it with an acquire load.
        let tail =
            unsafe { AtomicU16::from_ptr(&raw mut (*self.entries.as_ptr().cast::<RawBuf>()).resv) };
        // Release: the entries written by `recycle` are visible before the tail is.
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
        true
    }

    /// The first `len` bytes of buffer `bid`, just handed to us by a completion.
    ///
    /// # Safety
    ///
    /// A completion handed `bid` to us, and it is neither recycled nor lent to a send
    /// while the slice lives.
    unsafe fn received(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.count {
            return None;
        }
        // SAFETY: in bounds (`bid < count`, at most `size` bytes); by the caller's
        // contract nobody, the kernel included, writes the buffer while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.buffer_ptr(bid), len.min(self.size)) })
    }
}

/// A destination address, as `SendMsg` reads it.
#[repr(C)]
#[derive(Clone, Copy)]
union RawSockAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

/// What one `SendMsg` reads: slot *n* describes the send of buffer *n*.
#[repr(C)]
struct SendSlot {
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: RawSockAddr,
    /// The sending socket, whose in-flight count the completion decrements.
    from: Token,
}

/// What lives for the whole run at a fixed address.
#[repr(C)]
struct Fixed {
    /// Read by every multishot `RecvMsg`: only `msg_namelen` (`NAME_LEN`) and
    /// `msg_controllen` (0) matter.
    recv_msg: libc::msghdr,
    /// Where the wake-up `Read` puts the eventfd counter.
    wake: u64,
}

impl Fixed {
    fn map() -> io::Result<Mmap> {
        let fixed = Mmap::new(size_of::<Fixed>())?;
        let f = fixed.as_ptr().cast::<Fixed>();
        // SAFETY: the mapping is page-aligned, large enough for a `Fixed` and zero-filled
        // (a valid `msghdr` and `u64`), and not yet shared with the kernel.
        unsafe { (&raw mut (*f).recv_msg.msg_namelen).write(NAME_LEN as libc::socklen_t) };
        Ok(fixed)
    }
}

/// Everything the kernel reads or writes, kept at fixed addresses for a core's life.
struct KernelMem {
    bufs: BufRing,
    /// One send slot per buffer.
    slots: Mmap,
    /// One `Fixed`.
    fixed: Mmap,
}

impl KernelMem {
    fn new(buffers: u16) -> io::Result<KernelMem> {
        Ok(KernelMem {
            bufs: BufRing::new(buffers, BUFFER_SIZE)?,
            slots: Mmap::new(usize::from(buffers) * size_of::<SendSlot>())?,
            fixed: Fixed::map()?,
        })
    }

    /// Send slot `bid`; the caller checks `bid < bufs.count`.
    fn slot(&self, bid: u16) -> *mut SendSlot {
        self.slots
            .as_ptr()
            .cast::<SendSlot>()
            .wrapping_add(usize::from(bid))
    }

    fn recv_msg(&self) -> *mut libc::msghdr {
        // Address arithmetic only.
        self.fixed
            .as_ptr()
            .cast::<Fixed>()
            .wrapping_byte_add(std::mem::offset_of!(Fixed, recv_msg))
            .cast()
    }

    fn wake_buf(&self) -> *mut u8 {
        self.fixed
            .as_ptr()
            .wrapping_add(std::mem::offset_of!(Fixed, wake))
    }
}

/// Wakes a core blocked in `io_uring_enter`: an eventfd the core keeps a `Read` on.
#[derive(Clone, Debug)]
pub struct Waker {
    eventfd: Arc<File>,
}

impl Waker {
    pub fn wake(&self) -> io::Result<()> {
        (&*self.eventfd).write_all(&1u64.to_ne_bytes())
    }
}

/// A core's ring and the memory it shares with the kernel, created on the starting
/// thread so that setup errors surface at start.
pub struct Ring {
    /// Declared first: dropped (the ring closed) before `mem` is unmapped.
    uring: IoUring,
    /// `None` only once leaked by Drop.
    mem: Option<KernelMem>,
    eventfd: Arc<File>,
    /// The ring was created disabled with a single issuer: `run` enables it on the
    /// worker thread, which thereby becomes its only submitter.
    enable_on_run: bool,
    /// Some submitted operation may not have completed: Drop must not unmap `mem`.
    busy: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("fd", &self.uring.as_raw_fd())
            .field("buffers", &BUFFERS)
            .field("buffer_size", &BUFFER_SIZE)
            .field("single_issuer", &self.enable_on_run)
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.busy {
            if let Some(mem) = self.mem.take() {
                warn!(
                    bytes = usize::from(BUFFERS) * BUFFER_SIZE,
                    "io_uring core ended with operations in flight; leaking its buffers rather than unmapping memory the kernel may still write"
                );
                std::mem::forget(mem);
            }
        }
        // Then the fields drop in order: `uring` (closing the ring), then `mem`.
    }
}

/// The opcodes the engine submits.
const OPCODES: [(u8, &str); 4] = [
    (opcode::RecvMsg::CODE, "RECVMSG"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Read::CODE, "READ"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// Whether this kernel lets us run the io_uring engine; the error says why not.
///
/// Creates a small ring, probes every opcode the engine uses, then receives one
/// datagram the way the engine does (multishot `RecvMsg` into a registered buffer
/// ring), since neither buffer rings (5.19) nor multishot `RecvMsg` (6.0) are opcodes
/// of their own.
pub fn probe() -> Result<(), String> {
    let uring = IoUring::new(8).map_err(|e| {
        format!(
            "io_uring_setup failed: {e} (io_uring_disabled sysctl, seccomp or a container policy?)"
        )
    })?;
    let mut probe = Probe::new();
    uring
        .submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e} (kernel older than 5.6?)"))?;
    for (code, name) in OPCODES {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks IORING_OP_{name} (kernel too old?)"));
        }
    }
    probe_multishot_recv(uring)
}

const PROBE_PAYLOAD: &[u8] = b"sbc-media io_uring probe";
const PROBE_RECV: u64 = 1;
const PROBE_CANCEL: u64 = 2;

fn probe_multishot_recv(mut uring: IoUring) -> Result<(), String> {
    let mut bufs = BufRing::new(8, 256).map_err(|e| format!("cannot map probe buffers: {e}"))?;
    let fixed = Fixed::map().map_err(|e| format!("cannot map probe buffers: {e}"))?;
    // SAFETY: `uring` is closed (explicit drop below) before `bufs` is unmapped, and if
    // a receive may still be in flight `bufs` is leaked instead.
    unsafe { bufs.register(&uring.submitter(), 0) }.map_err(|e| {
        format!("cannot register a provided-buffer ring (IORING_REGISTER_PBUF_RING): {e} (kernel older than 5.19?)")
    })?;
    let (rx, tx) =
        UnixDatagram::pair().map_err(|e| format!("cannot create a probe socket pair: {e}"))?;
    tx.send(PROBE_PAYLOAD)
        .map_err(|e| format!("cannot send on a probe socket: {e}"))?;
    let recv_msg = fixed.as_ptr().cast::<libc::msghdr>();
    let recv = opcode::RecvMsgMulti::new(types::Fd(rx.as_raw_fd()), recv_msg, 0)
        .build()
        .user_data(PROBE_RECV);
    // SAFETY: the msghdr (`fixed`) and the buffers (`bufs`) stay mapped until the
    // receive's final completion (waited for below) or are leaked; `rx` lives until
    // this function returns, after the ring is closed.
    unsafe { uring.submission().push(&recv) }.map_err(|_| "the probe ring is full".to_string())?;

    let first = next_cqe(&mut uring);
    let verdict = match &first {
        Ok(cqe) if cqe.user_data() == PROBE_RECV => check_probe_datagram(cqe, &bufs, recv_msg),
        Ok(cqe) => Err(format!("unexpected probe completion {}", cqe.user_data())),
        Err(e) => Err(format!("a probe receive did not complete: {e}")),
    };
    // Still armed unless its completion said it ended.
    if !matches!(&first, Ok(cqe) if !cqueue::more(cqe.flags())) {
        let cancel = opcode::AsyncCancel::new(PROBE_RECV)
            .build()
            .user_data(PROBE_CANCEL);
        // SAFETY: a cancel refers to its target by user_data only: no memory, no fd.
        let pushed = unsafe { uring.submission().push(&cancel) }.is_ok();
        let (mut recv_done, mut cancel_done) = (false, !pushed);
        while !(recv_done && cancel_done) {
            match next_cqe(&mut uring) {
                Ok(c) if c.user_data() == PROBE_RECV => recv_done |= !cqueue::more(c.flags()),
                Ok(c) if c.user_data() == PROBE_CANCEL => cancel_done = true,
                Ok(_) => {}
                Err(e) => {
                    drop(uring);
                    // The receive may still write into them.
                    std::mem::forget((bufs, fixed));
                    return Err(format!("a cancelled probe receive did not complete: {e}"));
                }
            }
        }
    }
    drop(uring);
    verdict
}

fn check_probe_datagram(
    cqe: &cqueue::Entry,
    bufs: &BufRing,
    recv_msg: *const libc::msghdr,
) -> Result<(), String> {
    let res = cqe.result();
    if res < 0 {
        return Err(format!(
            "multishot RecvMsg from a buffer ring failed: {} (kernel older than 6.0?)",
            io::Error::from_raw_os_error(res.wrapping_neg())
        ));
    }
    let bid = cqueue::buffer_select(cqe.flags())
        .ok_or("a multishot RecvMsg completed without a provided buffer")?;
    // SAFETY: the completion handed buffer `bid` to us and the probe never recycles it.
    let data = unsafe { bufs.received(bid, res as usize) }
        .ok_or("the kernel picked a buffer outside the probe ring")?;
    // SAFETY: the msghdr lives in the probe's `fixed` mapping, written once before the
    // receive was submitted.
    let out = types::RecvMsgOut::parse(data, unsafe { &*recv_msg })
        .map_err(|()| "a multishot RecvMsg result did not parse".to_string())?;
    if out.payload_data() != PROBE_PAYLOAD {
        return Err("a multishot RecvMsg returned other bytes than were sent".into());
    }
    Ok(())
}

/// The next completion, waiting at most about a second for it.
fn next_cqe(uring: &mut IoUring) -> io::Result<cqueue::Entry> {
    loop {
        if let Some(cqe) = uring.completion().next() {
            return Ok(cqe);
        }
        let timeout = types::Timespec::new().sec(1);
        let args = types::SubmitArgs::new().timespec(&timeout);
        match uring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Create a core's ring, map and register its buffers, and create its wake-up eventfd.
pub fn setup() -> io::Result<(Ring, Waker)> {
    setup_with(BUFFERS)
}

/// [`setup`] with `buffers` receive buffers (a power of two; tests starve small rings).
fn setup_with(buffers: u16) -> io::Result<(Ring, Waker)> {
    let eventfd = Arc::new(new_eventfd()?);
    let (uring, enable_on_run) = new_uring()?;
    let mut mem = KernelMem::new(buffers)?;
    // SAFETY: `mem` moves into the Ring together with `uring`; Ring closes `uring`
    // before unmapping `mem`, and leaks `mem` if an operation may be in flight.
    unsafe { mem.bufs.register(&uring.submitter(), BUFFER_GROUP)? };
    let ring = Ring {
        uring,
        mem: Some(mem),
        eventfd: eventfd.clone(),
        enable_on_run,
        busy: false,
    };
    Ok((ring, Waker { eventfd }))
}

/// A ring with one issuer whose deferred task work runs only when it waits for
/// completions (6.1+): no inter-processor interrupts, completions batched. It is
/// created disabled so that the worker thread, not this one, becomes the issuer.
/// Older kernels get a plain ring.
fn new_uring() -> io::Result<(IoUring, bool)> {
    let fast: io::Result<IoUring> = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(SQ_ENTRIES);
    match fast {
        Ok(uring) => Ok((uring, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            debug!("io_uring single-issuer/deferred task work unsupported; using a plain ring");
            Ok((
                IoUring::builder()
                    .setup_cqsize(CQ_ENTRIES)
                    .build(SQ_ENTRIES)?,
                false,
            ))
        }
        Err(e) => Err(e),
    }
}

fn new_eventfd() -> io::Result<File> {
    // Blocking on purpose: io_uring completes a `Read` of an O_NONBLOCK file with
    // EAGAIN instead of waiting. Writers never block in practice (the counter would
    // have to reach 2^64 - 2).
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Run one core until a `Stop` command or the command channel closes, then cancel
/// every receive, wait for every operation to complete, and return.
pub fn run(ring: Ring, commands: Receiver<CoreCommand>, state: CoreState, epoch: Instant) {
    let stats = run_core(ring, commands, state, epoch);
    debug!(
        enobufs = stats.enobufs,
        oversize = stats.oversize,
        quiescent = stats.quiescent,
        "io_uring core stopped"
    );
}

/// What a core's run went through, for the log and for tests.
#[derive(Clone, Copy, Debug, Default)]
struct RunStats {
    /// Receives ended because the buffer ring was empty.
    enobufs: u64,
    /// Datagrams too large for a buffer (dropped as malformed).
    oversize: u64,
    /// Every submitted operation completed before the loop returned.
    quiescent: bool,
}

fn run_core(
    mut ring: Ring,
    commands: Receiver<CoreCommand>,
    state: CoreState,
    epoch: Instant,
) -> RunStats {
    if ring.enable_on_run {
        if let Err(e) = ring.uring.submitter().register_enable_rings() {
            error!(error = %e, "cannot enable this core's io_uring; it relays nothing");
            return RunStats {
                quiescent: true,
                ..RunStats::default()
            };
        }
    }
    let Ring {
        uring,
        mem,
        eventfd,
        busy,
        ..
    } = &mut ring;
    let Some(mem) = mem.as_mut() else {
        error!("io_uring core started without its buffers");
        return RunStats {
            quiescent: true,
            ..RunStats::default()
        };
    };
    let mut core = Core {
        wake_fd: eventfd.as_raw_fd(),
        mem,
        state,
        commands,
        epoch,
        sockets: Vec::new(),
        to_arm: Vec::new(),
        starved: Vec::new(),
        to_cancel: Vec::new(),
        wake_armed: false,
        in_flight: 0,
        sends_in_flight: 0,
        stopping: false,
        stats: RunStats::default(),
    };
    *busy = true;
    core.stats.quiescent = core.drive(uring);
    *busy = !core.stats.quiescent;
    core.stats
    // `core` (and with it CoreState, closing the sockets) drops before `ring`.
}

/// The kernel-side life of one socket.
#[derive(Clone, Copy, Debug, Default)]
struct SocketOps {
    /// Its multishot receive was submitted and has not posted its final completion.
    recv_armed: bool,
    /// A cancel of that receive is in flight.
    cancel_pending: bool,
    /// Cancels sent so far.
    cancels: u8,
    /// Sends from this socket in flight.
    sends: u32,
    /// Removed from the session table: never re-armed, released once idle.
    removing: bool,
    /// Consecutive failed receives.
    errors: u32,
}

/// The submission queue of one batch, flushed early if it fills.
struct Sq<'a> {
    submitter: Submitter<'a>,
    queue: squeue::SubmissionQueue<'a>,
}

impl Sq<'_> {
    /// Queue `entry`; false if it could not be (the queue stayed full).
    ///
    /// # Safety
    ///
    /// As for `SubmissionQueue::push`: whatever `entry` points to (memory and file
    /// descriptor) stays valid until its (final) completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        if self.queue.is_full() {
            self.queue.sync();
            if let Err(e) = self.submitter.submit() {
                debug!(error = %e, "cannot flush a full submission queue");
            }
            self.queue.sync();
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { self.queue.push(entry) }.is_ok()
    }

    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.queue.sync();
        let submitted = self.submitter.submit_and_wait(want);
        self.queue.sync();
        submitted
    }
}

/// One core's loop state. See the module doc for the rules it keeps.
struct Core<'a> {
    mem: &'a mut KernelMem,
    wake_fd: RawFd,
    state: CoreState,
    commands: Receiver<CoreCommand>,
    epoch: Instant,
    /// Indexed by token.
    sockets: Vec<SocketOps>,
    /// Sockets whose receive is to be (re)armed at the end of the batch.
    to_arm: Vec<Token>,
    /// Sockets whose receive ended for lack of buffers: re-armed once buffers return.
    starved: Vec<Token>,
    /// Removed sockets whose receive is to be cancelled at the end of the batch.
    to_cancel: Vec<Token>,
    wake_armed: bool,
    /// Operations submitted (or queued) whose final completion has not been seen.
    in_flight: usize,
    sends_in_flight: usize,
    stopping: bool,
    stats: RunStats,
}

fn bump(c: &AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl Core<'_> {
    /// The loop; returns whether every submitted operation completed (the memory may
    /// be unmapped).
    fn drive(&mut self, uring: &mut IoUring) -> bool {
        loop {
            let (submitter, queue, mut completions) = uring.split();
            let mut sq = Sq { submitter, queue };
            self.end_batch(&mut sq);
            if self.stopping && self.in_flight == 0 {
                return true;
            }
            if let Err(e) = sq.submit_and_wait(1) {
                match e.raw_os_error() {
                    // Interrupted, or the kernel wants completions reaped first.
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => {}
                    _ => {
                        error!(error = %e, "io_uring_enter failed; this core stops relaying");
                        return self.in_flight == 0;
                    }
                }
            }
            let now_us = clock::now()
                .saturating_duration_since(self.epoch)
                .as_micros() as u64;
            completions.sync();
            for cqe in &mut completions {
                self.complete(now_us, cqe.user_data(), cqe.result(), cqe.flags(), &mut sq);
            }
            // Hand the completion slots back.
            completions.sync();
        }
    }

    fn complete(&mut self, now_us: u64, user_data: u64, res: i32, flags: u32, sq: &mut Sq<'_>) {
        match Op::decode(user_data) {
            Some(Op::Recv(token)) => self.on_recv(now_us, token, res, flags, sq),
            Some(Op::Send(bid)) => self.on_send(bid, res),
            Some(Op::Wake) => self.on_wake(res),
            Some(Op::Cancel(token)) => self.on_cancel(token, res),
            None => warn!(
                user_data,
                res, "completion of an operation this core never submitted"
            ),
        }
    }

    /// Queue what the batch left to do, buffers first so that the receives armed here
    /// have some to pick.
    fn end_batch(&mut self, sq: &mut Sq<'_>) {
        let returned = self.mem.bufs.publish();
        // The ring can only run dry while sends hold buffers, so a starved receive waits
        // for a send to complete, or for none to be in flight.
        if !self.starved.is_empty() && (returned || self.sends_in_flight == 0) {
            self.to_arm.append(&mut self.starved);
        }
        if !self.to_arm.is_empty() {
            let mut pending = std::mem::take(&mut self.to_arm);
            pending.retain(|&token| !self.arm_recv(token, sq));
            self.to_arm = pending;
        }
        if !self.to_cancel.is_empty() {
            let mut pending = std::mem::take(&mut self.to_cancel);
            pending.retain(|&token| !self.cancel_recv(token, sq));
            self.to_cancel = pending;
        }
        if !self.wake_armed && !self.stopping {
            self.arm_wake(sq);
        }
    }

    /// Arm socket `token`'s multishot receive if it should be; false to retry later.
    fn arm_recv(&mut self, token: Token, sq: &mut Sq<'_>) -> bool {
        let Some(ops) = self.sockets.get(token) else {
            return true;
        };
        if ops.recv_armed || ops.removing || self.stopping {
            return true;
        }
        let Some(socket) = self.state.socket(token) else {
            return true;
        };
        let entry = opcode::RecvMsgMulti::new(
            types::Fd(socket.as_raw_fd()),
            self.mem.recv_msg(),
            BUFFER_GROUP,
        )
        .build()
        .user_data(Op::Recv(token).encode());
        // SAFETY: the msghdr lives in `mem.fixed` and the buffers in `mem.bufs`, which
        // Ring keeps mapped past every completion. The fd is socket `token`'s, which
        // CoreState keeps open until `release`, and `try_release` waits for this
        // receive's final completion (`recv_armed`).
        if !unsafe { sq.push(&entry) } {
            return false;
        }
        if let Some(ops) = self.sockets.get_mut(token) {
            ops.recv_armed = true;
        }
        self.in_flight += 1;
        true
    }

    /// Cancel removed socket `token`'s receive if it runs; false to retry later.
    fn cancel_recv(&mut self, token: Token, sq: &mut Sq<'_>) -> bool {
        let Some(ops) = self.sockets.get_mut(token) else {
            return true;
        };
        if !ops.removing || !ops.recv_armed || ops.cancel_pending {
            return true;
        }
        let entry = opcode::AsyncCancel::new(Op::Recv(token).encode())
            .build()
            .user_data(Op::Cancel(token).encode());
        // SAFETY: a cancel names its target by user_data; it refers to no memory and no
        // file descriptor.
        if !unsafe { sq.push(&entry) } {
            return false;
        }
        ops.cancel_pending = true;
        ops.cancels = ops.cancels.saturating_add(1);
        self.in_flight += 1;
        true
    }

    fn arm_wake(&mut self, sq: &mut Sq<'_>) {
        let entry = opcode::Read::new(types::Fd(self.wake_fd), self.mem.wake_buf(), 8)
            .build()
            .user_data(Op::Wake.encode());
        // SAFETY: the 8-byte target lives in `mem.fixed`, which Ring keeps mapped past
        // every completion, and only this one read (at most one at a time) writes it.
        // The eventfd is held open by Ring's Arc until after `run` returns.
        if unsafe { sq.push(&entry) } {
            self.wake_armed = true;
            self.in_flight += 1;
        }
        // Otherwise the queue stayed full: retried at the end of the next batch.
    }

    fn on_recv(&mut self, now_us: u64, token: Token, res: i32, flags: u32, sq: &mut Sq<'_>) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(ops) = self.sockets.get_mut(token) else {
            warn!(
                token,
                "receive completion for a socket this core does not know"
            );
            if let Some(bid) = bid {
                self.mem.bufs.recycle(bid);
            }
            return;
        };
        if !more {
            ops.recv_armed = false;
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if res >= 0 {
            ops.errors = 0;
            match bid {
                Some(bid) => self.on_datagram(now_us, token, bid, res as usize, sq),
                None => debug!(token, res, "receive completion without a buffer"),
            }
            if !more {
                self.to_arm.push(token);
            }
        } else {
            if let Some(bid) = bid {
                self.mem.bufs.recycle(bid);
            }
            match res.wrapping_neg() {
                libc::ENOBUFS => {
                    self.stats.enobufs += 1;
                    debug!(
                        token,
                        "receive buffers exhausted; re-arming once buffers return"
                    );
                    if !more {
                        self.starved.push(token);
                    }
                }
                // Our own cancel (removal, stop); re-arming is refused if so.
                libc::ECANCELED => {
                    if !more {
                        self.to_arm.push(token);
                    }
                }
                errno => {
                    ops.errors = ops.errors.saturating_add(1);
                    let error = io::Error::from_raw_os_error(errno);
                    if ops.errors < MAX_RECV_ERRORS {
                        debug!(token, %error, "receive failed");
                        if !more {
                            self.to_arm.push(token);
                        }
                    } else if !more {
                        warn!(token, %error, "a media socket keeps failing to receive; no longer reading it");
                    }
                }
            }
        }
        self.try_release(token);
    }

    /// A datagram in buffer `bid` (`len` bytes of recvmsg result) on socket `token`.
    fn on_datagram(&mut self, now_us: u64, token: Token, bid: u16, len: usize, sq: &mut Sq<'_>) {
        // SAFETY: the completion just handed buffer `bid` to us; it is recycled or lent
        // to a send only below, after the slice's last use.
        let Some(data) = (unsafe { self.mem.bufs.received(bid, len) }) else {
            warn!(bid, "receive completion names a buffer outside the ring");
            return;
        };
        // SAFETY: the msghdr lives in `mem.fixed`, written once at setup and only read
        // since (by the kernel and here).
        let recv_msg = unsafe { &*self.mem.recv_msg() };
        let Ok(out) = types::RecvMsgOut::parse(data, recv_msg) else {
            debug!(token, len, "unparsable multishot recvmsg result");
            self.mem.bufs.recycle(bid);
            return;
        };
        let payload = out.payload_data();
        let offset = payload.as_ptr() as usize - data.as_ptr() as usize;
        let payload_len = payload.len();
        let forward = if out.is_payload_truncated() || out.is_name_data_truncated() {
            // Larger than a buffer: what arrived is not the datagram that was sent.
            self.stats.oversize += 1;
            let c = &self.state.counters;
            bump(&c.packets_in, 1);
            bump(&c.bytes_in, payload_len as u64);
            bump(&c.dropped[DropReason::Malformed.index()], 1);
            None
        } else if let Some(src) = sockaddr_from(out.name_data()) {
            self.state.on_datagram(now_us, token, src, payload)
        } else {
            debug!(token, "datagram from an address family we do not relay");
            None
        };
        match forward {
            Some(forward) => self.send(bid, offset, payload_len, forward, sq),
            None => self.mem.bufs.recycle(bid),
        }
    }

    /// Send `len` bytes at `offset` in buffer `bid` as `forward` says; the buffer is
    /// lent to the send until its completion.
    fn send(&mut self, bid: u16, offset: usize, len: usize, forward: Forward, sq: &mut Sq<'_>) {
        let fd = match (
            self.state.socket(forward.from),
            self.sockets.get(forward.from),
        ) {
            (Some(socket), Some(ops)) if !ops.removing => socket.as_raw_fd(),
            _ => {
                self.state.on_send_error();
                self.mem.bufs.recycle(bid);
                return;
            }
        };
        let (addr, addr_len) = raw_sockaddr(forward.to);
        let base = self.mem.bufs.buffer_ptr(bid).wrapping_add(offset);
        let slot = self.mem.slot(bid);
        // SAFETY: `bid < bufs.count` (`received` checked it), so slot `bid` lies inside
        // `mem.slots`. It belongs to buffer `bid`, which is ours (received, neither
        // recycled nor lent), so no send in flight reads it. Fields are written through
        // raw pointers; `msg_control`, `msg_controllen` and `msg_flags` stay zero.
        let msg = unsafe {
            (&raw mut (*slot).iov).write(libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            });
            (&raw mut (*slot).addr).write(addr);
            (&raw mut (*slot).from).write(forward.from);
            let msg = &raw mut (*slot).msg;
            (&raw mut (*msg).msg_name).write((&raw mut (*slot).addr).cast());
            (&raw mut (*msg).msg_namelen).write(addr_len);
            (&raw mut (*msg).msg_iov).write(&raw mut (*slot).iov);
            (&raw mut (*msg).msg_iovlen).write(1);
            msg
        };
        let entry = opcode::SendMsg::new(types::Fd(fd), msg)
            .build()
            .user_data(Op::Send(bid).encode());
        // SAFETY: until this send's completion the msghdr, iovec and address stay in
        // slot `bid` and the payload in buffer `bid`, both in `mem` (mapped past every
        // completion by Ring), and neither is touched before `on_send`. The fd is socket
        // `forward.from`'s, kept open by CoreState until `release`, which `try_release`
        // defers while the socket has sends in flight.
        if unsafe { sq.push(&entry) } {
            if let Some(ops) = self.sockets.get_mut(forward.from) {
                ops.sends += 1;
            }
            self.sends_in_flight += 1;
            self.in_flight += 1;
        } else {
            self.state.on_send_error();
            self.mem.bufs.recycle(bid);
        }
    }

    fn on_send(&mut self, bid: u16, res: i32) {
        if bid >= self.mem.bufs.count {
            warn!(bid, "send completion names a buffer outside the ring");
            return;
        }
        // SAFETY: `bid < bufs.count`; the send's completion is here, so the kernel is done
        // with slot `bid`.
        let from = unsafe { (&raw const (*self.mem.slot(bid)).from).read() };
        self.in_flight = self.in_flight.saturating_sub(1);
        self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
        if let Some(ops) = self.sockets.get_mut(from) {
            ops.sends = ops.sends.saturating_sub(1);
        }
        if res < 0 {
            self.state.on_send_error();
            debug!(error = %io::Error::from_raw_os_error(res.wrapping_neg()), "send failed");
        }
        self.mem.bufs.recycle(bid);
        self.try_release(from);
    }

    fn on_wake(&mut self, res: i32) {
        self.wake_armed = false;
        self.in_flight = self.in_flight.saturating_sub(1);
        if res < 0 {
            debug!(error = %io::Error::from_raw_os_error(res.wrapping_neg()), "wake-up read failed");
        }
        // Re-armed by `end_batch`, before this batch's submit: a command queued after the
        // drain below writes the eventfd again and completes that read.
        while !self.stopping {
            match self.commands.try_recv() {
                Ok(cmd) => {
                    let applied = self.state.apply(cmd);
                    self.on_applied(applied);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.begin_stop(),
            }
        }
    }

    fn on_applied(&mut self, applied: Applied) {
        for &token in &applied.added {
            if self.sockets.len() <= token {
                self.sockets.resize(token + 1, SocketOps::default());
            }
            // A token is reused only after `release`, which leaves its entry idle.
            self.sockets[token] = SocketOps::default();
            self.to_arm.push(token);
        }
        for &token in &applied.removed {
            match self.sockets.get_mut(token) {
                Some(ops) => {
                    ops.removing = true;
                    self.to_cancel.push(token);
                    self.try_release(token);
                }
                // Never armed: nothing of ours refers to it.
                None => self.state.release(&[token]),
            }
        }
        if applied.stop {
            self.begin_stop();
        }
    }

    /// Stop: cancel every receive; `drive` returns once everything has completed. The
    /// wake-up read is not re-armed (the command that stops arrived through it).
    fn begin_stop(&mut self) {
        self.stopping = true;
        for (token, ops) in self.sockets.iter_mut().enumerate() {
            if ops.recv_armed {
                ops.removing = true;
                self.to_cancel.push(token);
            }
        }
        self.to_arm.clear();
        self.starved.clear();
    }

    fn on_cancel(&mut self, token: Token, res: i32) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(ops) = self.sockets.get_mut(token) else {
            return;
        };
        ops.cancel_pending = false;
        match res.wrapping_neg() {
            // Found (the receive completes with ECANCELED), or already completing.
            0 | libc::EALREADY => {}
            // Not found: the receive has ended and its final completion is posted or
            // about to be (it may trail the cancel's).
            libc::ENOENT => {
                if ops.recv_armed && ops.cancels < MAX_CANCELS {
                    self.to_cancel.push(token);
                }
            }
            errno => debug!(token, error = %io::Error::from_raw_os_error(errno), "cancel failed"),
        }
        self.try_release(token);
    }

    /// Close removed socket `token` once nothing of ours refers to it any more.
    fn try_release(&mut self, token: Token) {
        let Some(ops) = self.sockets.get_mut(token) else {
            return;
        };
        if ops.removing && !ops.recv_armed && !ops.cancel_pending && ops.sends == 0 {
            *ops = SocketOps::default();
            self.state.release(&[token]);
        }
    }
}

/// A source address as the kernel wrote it (`sockaddr_in` or `sockaddr_in6`), read the
/// way std's `recv_from` reads it (flow info and scope id as stored).
fn sockaddr_from(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match i32::from(family) {
        libc::AF_INET if name.len() >= size_of::<libc::sockaddr_in>() => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 if name.len() >= size_of::<libc::sockaddr_in6>() => {
            let flowinfo = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope_id = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope_id,
            )))
        }
        _ => None,
    }
}

/// `to` as `SendMsg` reads it, and its length.
fn raw_sockaddr(to: SocketAddr) -> (RawSockAddr, libc::socklen_t) {
    match to {
        SocketAddr::V4(a) => (
            RawSockAddr {
                v4: libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                },
            },
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ),
        SocketAddr::V6(a) => (
            RawSockAddr {
                v6: libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                },
            },
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_rejects_foreign_values() {
        for op in [
            Op::Recv(0),
            Op::Recv(123_456),
            Op::Send(0),
            Op::Send(BUFFERS - 1),
            Op::Wake,
            Op::Cancel(7),
        ] {
            assert_eq!(Op::decode(op.encode()), Some(op));
        }
        assert_ne!(Op::Recv(5).encode(), Op::Cancel(5).encode());
        assert_eq!(Op::decode(0), None, "0 is reserved");
        assert_eq!(Op::decode(u64::MAX), None);
        assert_eq!(
            Op::decode((Op::SEND << Op::KIND_SHIFT) | 70_000),
            None,
            "no such buffer id"
        );
        assert_eq!(Op::decode((Op::WAKE << Op::KIND_SHIFT) | 1), None);
    }

    #[test]
    fn source_addresses_parse_like_std_and_garbage_does_not() {
        for addr in ["192.0.2.10:4000", "[2001:db8::1]:6000", "[fe80::1%3]:5004"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let (raw, len) = raw_sockaddr(addr);
            // SAFETY: test: reading the bytes of a plain-data union just written.
            let bytes =
                unsafe { std::slice::from_raw_parts((&raw const raw).cast::<u8>(), len as usize) };
            assert_eq!(sockaddr_from(bytes), Some(addr));
            assert_eq!(sockaddr_from(&bytes[..bytes.len() - 1]), None, "truncated");
        }
        assert_eq!(sockaddr_from(&[]), None);
        assert_eq!(sockaddr_from(&[0xff; 28]), None);
    }

    /// A core with a tiny buffer ring relaying one session between two loopback peers.
    struct Harness {
        tx: std::sync::mpsc::Sender<CoreCommand>,
        waker: Waker,
        thread: std::thread::JoinHandle<RunStats>,
        counters: Arc<super::super::core::CoreCounters>,
        a: std::net::UdpSocket,
        b: std::net::UdpSocket,
        leg0: SocketAddr,
        leg1: SocketAddr,
    }

    fn harness(buffers: u16) -> Harness {
        use crate::proto::relay::{LegRelay, SessionRelay, SessionShared};
        use sbc_shared::ids::SessionId;
        use sbc_shared::rpc::msg::LatchMode;
        use std::net::UdpSocket;

        let ip = std::net::IpAddr::V4(Ipv4Addr::LOCALHOST);
        let peer = || {
            let s = UdpSocket::bind((ip, 0)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            s
        };
        let (a, b) = (peer(), peer());
        let m0 = super::super::ports::bind_pair(ip, 0, 0, None).unwrap();
        let m1 = super::super::ports::bind_pair(ip, 0, 0, None).unwrap();
        let (leg0, leg1) = (m0.rtp.local_addr().unwrap(), m1.rtp.local_addr().unwrap());
        let relay = SessionRelay::new(
            vec![
                LegRelay::new(Some(a.local_addr().unwrap()), None, LatchMode::Off, None),
                LegRelay::new(Some(b.local_addr().unwrap()), None, LatchMode::Off, None),
            ],
            SessionShared::new(2),
        );
        let (ring, waker) = setup_with(buffers).unwrap();
        let counters = Arc::new(super::super::core::CoreCounters::default());
        let state = CoreState::new(counters.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || run_core(ring, rx, state, clock::now()));
        let sockets = vec![(m0.rtp, m0.rtcp), (m1.rtp, m1.rtcp)];
        tx.send(CoreCommand::Add {
            id: SessionId(1),
            sockets,
            relay,
        })
        .unwrap();
        waker.wake().unwrap();
        Harness {
            tx,
            waker,
            thread,
            counters,
            a,
            b,
            leg0,
            leg1,
        }
    }

    fn rtp(seq: u16, len: usize) -> Vec<u8> {
        let mut p = vec![seq as u8; len];
        p[..4].copy_from_slice(&[0x80, 0, (seq >> 8) as u8, seq as u8]);
        p
    }

    impl Harness {
        fn stop(self) -> RunStats {
            self.tx.send(CoreCommand::Stop).unwrap();
            self.waker.wake().unwrap();
            self.thread.join().unwrap()
        }
    }

    #[test]
    fn an_exhausted_buffer_ring_delays_packets_but_loses_none() {
        let h = harness(2);
        for window in 0..10u16 {
            for i in 0..50 {
                h.a.send_to(&rtp(window * 50 + i, 172), h.leg0).unwrap();
            }
            let mut buf = [0u8; 2048];
            for i in 0..50 {
                let (n, src) =
                    h.b.recv_from(&mut buf)
                        .unwrap_or_else(|e| panic!("packet {} of window {window} lost: {e}", i));
                assert_eq!((n, src), (172, h.leg1));
            }
        }
        let counters = h.counters.clone();
        let stats = h.stop();
        assert!(stats.enobufs > 0, "two buffers cannot absorb bursts of 50");
        assert!(stats.quiescent);
        assert_eq!(counters.packets_out.load(Ordering::Relaxed), 500);
        assert_eq!(counters.send_errors.load(Ordering::Relaxed), 0);
        assert_eq!(
            counters.sessions.load(Ordering::Relaxed),
            1,
            "stopping is not removing"
        );
    }

    #[test]
    fn oversized_datagrams_are_dropped_as_malformed() {
        let h = harness(4);
        h.a.send_to(&rtp(1, 4000), h.leg0).unwrap();
        h.a.send_to(&rtp(2, BUFFER_SIZE - 16 - NAME_LEN), h.leg0)
            .unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = h.b.recv_from(&mut buf).unwrap();
        assert_eq!(
            n,
            BUFFER_SIZE - 16 - NAME_LEN,
            "the largest datagram that fits is relayed"
        );
        assert_eq!(&buf[..4], &[0x80, 0, 0, 2]);
        let counters = h.counters.clone();
        let stats = h.stop();
        assert_eq!(stats.oversize, 1);
        assert_eq!(
            counters.dropped[DropReason::Malformed.index()].load(Ordering::Relaxed),
            1
        );
        assert_eq!(counters.packets_in.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ring_moves_to_the_worker_and_waker_is_shared() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Ring>();
        send_sync::<Waker>();
    }

    #[test]
    fn a_ring_set_up_but_never_run_drops_cleanly() {
        let (ring, waker) = setup().unwrap();
        assert!(!ring.busy);
        waker.wake().unwrap();
        drop(ring);
        // The eventfd outlives the ring while a Waker holds it.
        waker.wake().unwrap();
    }
}
