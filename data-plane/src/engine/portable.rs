//! The portable engine: readiness (epoll through mio) and plain `recv_from`/`send_to`.
//!
//! It runs the same per-packet code as the io_uring engine ([`CoreState`]) and is used
//! where io_uring is missing, refused by the kernel's policy, or disabled in config.
//! Each readable socket is drained until it would block (mio is edge-triggered).

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token as MioToken};
use tracing::{debug, warn};

use super::core::{CoreCommand, CoreState};
use crate::clock;

/// The waker's token; sockets use their table index.
pub const WAKER: MioToken = MioToken(usize::MAX);

/// Largest datagram relayed; bigger ones are truncated by the kernel and dropped.
const MAX_DATAGRAM: usize = 2048;

/// Run one core until a `Stop` command or the command channel closes.
pub fn run(mut poll: Poll, commands: Receiver<CoreCommand>, mut state: CoreState, epoch: Instant) {
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(200))) {
            if e.kind() != ErrorKind::Interrupted {
                warn!(error = %e, "epoll failed");
            }
            continue;
        }
        for event in events.iter() {
            if event.token() == WAKER {
                continue;
            }
            let token = event.token().0;
            while let Some(socket) = state.socket(token) {
                match socket.recv_from(&mut buf) {
                    Ok((n, src)) => {
                        let now_us =
                            clock::now().saturating_duration_since(epoch).as_micros() as u64;
                        if let Some(send) = state.on_datagram(now_us, token, src, &buf[..n]) {
                            let sent = state
                                .socket(send.from)
                                .map(|s| s.send_to(&buf[..n], send.to));
                            if !matches!(sent, Some(Ok(_))) {
                                state.on_send_error();
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // ICMP port unreachable from an earlier send surfaces here; the
                        // socket is still good.
                        debug!(error = %e, "recv_from failed");
                        if e.kind() != ErrorKind::ConnectionRefused {
                            break;
                        }
                    }
                }
            }
        }
        // Commands after packets: a removal never races a datagram being handled.
        loop {
            let cmd = match commands.try_recv() {
                Ok(c) => c,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
            };
            let applied = state.apply(cmd);
            for &t in &applied.added {
                if let Some(s) = state.socket(t) {
                    let fd = s.as_raw_fd();
                    if let Err(e) = poll.registry().register(
                        &mut SourceFd(&fd),
                        MioToken(t),
                        Interest::READABLE,
                    ) {
                        warn!(error = %e, "cannot watch a media socket");
                    }
                }
            }
            for &t in &applied.removed {
                if let Some(s) = state.socket(t) {
                    let fd = s.as_raw_fd();
                    let _ = poll.registry().deregister(&mut SourceFd(&fd));
                }
            }
            state.release(&applied.removed);
            if applied.stop {
                return;
            }
        }
    }
}
