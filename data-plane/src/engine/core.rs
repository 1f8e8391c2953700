//! The state one worker core owns, shared by both engine backends (io_uring and
//! portable): its sockets, its sessions' relays, its counters. A backend receives a
//! datagram on a socket token, calls [`CoreState::on_datagram`], and sends the same bytes
//! where it says. Commands from the RPC thread (add, update, remove a session) arrive
//! through [`CoreCommand`].

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sbc_shared::ids::SessionId;

use crate::proto::relay::{Component, DropReason, SessionRelay, Verdict};

/// Index of a socket in a core's socket table (stable while the socket lives).
pub type Token = usize;

/// What the RPC thread asks a core to do.
#[derive(Debug)]
pub enum CoreCommand {
    /// Start relaying for a session: its bound sockets (RTP, RTCP per leg) and relay.
    Add {
        id: SessionId,
        sockets: Vec<(UdpSocket, UdpSocket)>,
        relay: SessionRelay,
    },
    /// New signalled addresses for some legs.
    Update {
        id: SessionId,
        legs: Vec<(usize, Option<SocketAddr>, Option<SocketAddr>)>,
    },
    /// Stop relaying and close the session's sockets.
    Remove { id: SessionId },
    /// Leave the loop (process shutdown).
    Stop,
}

/// Per-core counters, single writer (the core), read by the metrics scrape.
#[derive(Debug, Default)]
pub struct CoreCounters {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub send_errors: AtomicU64,
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    pub sessions: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// One socket the core reads.
#[derive(Debug)]
pub struct SocketEntry {
    pub socket: UdpSocket,
    pub session: SessionId,
    pub leg: usize,
    pub component: Component,
}

#[derive(Debug)]
struct CoreSession {
    relay: SessionRelay,
    /// (RTP token, RTCP token) per leg.
    tokens: Vec<(Token, Token)>,
}

/// What a backend must do after a command.
#[derive(Debug, Default)]
pub struct Applied {
    /// Sockets to start receiving on.
    pub added: Vec<Token>,
    /// Sockets removed (already closed by the time this returns, unless the backend
    /// still holds an in-flight operation on them: see the backend's notes).
    pub removed: Vec<Token>,
    pub stop: bool,
}

#[derive(Debug)]
pub struct CoreState {
    sockets: Vec<Option<SocketEntry>>,
    free_tokens: Vec<Token>,
    sessions: HashMap<SessionId, CoreSession>,
    pub counters: Arc<CoreCounters>,
}

/// Where to send a forwarded datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Send {
    pub from: Token,
    pub to: SocketAddr,
}

impl CoreState {
    pub fn new(counters: Arc<CoreCounters>) -> Self {
        Self {
            sockets: Vec::new(),
            free_tokens: Vec::new(),
            sessions: HashMap::new(),
            counters,
        }
    }

    pub fn socket(&self, token: Token) -> Option<&UdpSocket> {
        self.sockets.get(token)?.as_ref().map(|e| &e.socket)
    }

    fn insert_socket(&mut self, entry: SocketEntry) -> Token {
        match self.free_tokens.pop() {
            Some(t) => {
                self.sockets[t] = Some(entry);
                t
            }
            None => {
                self.sockets.push(Some(entry));
                self.sockets.len() - 1
            }
        }
    }

    /// Apply a command. Removal drops the sockets (closing them) unless `keep` says the
    /// backend must close them itself later.
    pub fn apply(&mut self, cmd: CoreCommand) -> Applied {
        let mut out = Applied::default();
        match cmd {
            CoreCommand::Add { id, sockets, relay } => {
                let mut tokens = Vec::with_capacity(sockets.len());
                for (leg, (rtp, rtcp)) in sockets.into_iter().enumerate() {
                    let t_rtp = self.insert_socket(SocketEntry {
                        socket: rtp,
                        session: id,
                        leg,
                        component: Component::Rtp,
                    });
                    let t_rtcp = self.insert_socket(SocketEntry {
                        socket: rtcp,
                        session: id,
                        leg,
                        component: Component::Rtcp,
                    });
                    out.added.extend([t_rtp, t_rtcp]);
                    tokens.push((t_rtp, t_rtcp));
                }
                self.sessions.insert(id, CoreSession { relay, tokens });
                bump(&self.counters.sessions, 1);
            }
            CoreCommand::Update { id, legs } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    for (leg, rtp, rtcp) in legs {
                        if let Some(l) = s.relay.leg_mut(leg) {
                            l.update(rtp, rtcp);
                        }
                    }
                }
            }
            CoreCommand::Remove { id } => {
                if let Some(s) = self.sessions.remove(&id) {
                    for (a, b) in s.tokens {
                        out.removed.extend([a, b]);
                    }
                    let n = self.counters.sessions.load(Ordering::Relaxed);
                    self.counters
                        .sessions
                        .store(n.saturating_sub(1), Ordering::Relaxed);
                }
            }
            CoreCommand::Stop => out.stop = true,
        }
        out
    }

    /// Forget removed sockets (closing them). Backends call this once no operation of
    /// theirs refers to the sockets any more.
    pub fn release(&mut self, tokens: &[Token]) {
        for &t in tokens {
            if let Some(slot) = self.sockets.get_mut(t) {
                if slot.take().is_some() {
                    self.free_tokens.push(t);
                }
            }
        }
    }

    /// A datagram of `len` bytes arrived on `token` from `src`.
    pub fn on_datagram(
        &mut self,
        now_us: u64,
        token: Token,
        src: SocketAddr,
        packet: &[u8],
    ) -> Option<Send> {
        let c = &self.counters;
        bump(&c.packets_in, 1);
        bump(&c.bytes_in, packet.len() as u64);
        let entry = self.sockets.get(token)?.as_ref()?;
        let session = self.sessions.get_mut(&entry.session)?;
        match session
            .relay
            .handle_packet(now_us, entry.leg, entry.component, src, packet)
        {
            Verdict::Forward { leg, component, to } => {
                let (rtp, rtcp) = *session.tokens.get(leg)?;
                let from = match component {
                    Component::Rtp => rtp,
                    Component::Rtcp => rtcp,
                };
                bump(&c.packets_out, 1);
                bump(&c.bytes_out, packet.len() as u64);
                Some(Send { from, to })
            }
            Verdict::Drop(reason) => {
                bump(&c.dropped[reason.index()], 1);
                None
            }
        }
    }

    /// A send failed (the peer's port is closed, buffer full...).
    pub fn on_send_error(&self) {
        bump(&self.counters.send_errors, 1);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}
