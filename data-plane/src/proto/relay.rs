//! One session's packet relay, sans-IO: which datagrams are accepted on which leg, and
//! where they go.
//!
//! Driving contract: for every datagram received on a leg's RTP or RTCP port call
//! [`SessionRelay::handle_packet`] with the arrival time, the source address and the
//! bytes; it returns [`Verdict::Forward`] (send the same bytes, untouched, out of the
//! named leg and component to the named address) or [`Verdict::Drop`] with the reason
//! to count. Nothing here allocates or reads the clock.
//!
//! Source rules (the RTP Bleed / RTP Inject defence, CVE-2017-14099, CVE-2025-53399):
//! - a leg accepts packets only from its peer: the signalled address exactly
//!   (`LatchMode::Off`), the signalled IP on any port (`SignalledIp`), or any address
//!   (`AnyIp`, only where the node's config allows it);
//! - the first accepted packet locks the peer address (per component); afterwards any
//!   other source is dropped as `wrong_source`, and nothing is ever sent to a source
//!   that was not accepted;
//! - a new signalled address (re-INVITE, ICE restart) unlocks the leg again.
//!
//! Legs pair up in order: 0 ↔ 1, 2 ↔ 3, … What one leg receives on RTP goes out of its
//! partner's RTP port to the partner's peer; RTCP likewise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sbc_shared::rpc::msg::{LatchMode, LegStats};

use super::rtp::{Kind, ReceiveStats, classify};

/// A leg's two ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    Rtp = 0,
    Rtcp = 1,
}

/// Why a datagram was not forwarded. Each is a label of
/// `sbc_media_packets_dropped_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not RTP/RTCP (bad version, too short), or RTP on an RTCP port.
    Malformed,
    /// The leg has no peer address yet and may not learn one from this source.
    Unsolicited,
    /// The peer address is locked (or signalled exactly) and this is another source.
    WrongSource,
    /// The partner leg has nowhere to send yet (no signalled or learned address).
    NoDestination,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::Malformed,
        DropReason::Unsolicited,
        DropReason::WrongSource,
        DropReason::NoDestination,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Unsolicited => "unsolicited",
            DropReason::WrongSource => "wrong_source",
            DropReason::NoDestination => "no_destination",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What to do with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward {
        leg: usize,
        component: Component,
        to: SocketAddr,
    },
    Drop(DropReason),
}

/// Counters of one leg, written only by the core that owns the session and read by the
/// RPC thread (stats queries, metrics). Single writer: increments are a relaxed load and
/// store, not a locked read-modify-write.
#[derive(Debug, Default)]
pub struct LegCounters {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub packets_dropped: AtomicU64,
    pub packets_lost: AtomicU64,
    pub jitter_us: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl LegCounters {
    pub fn snapshot(&self) -> LegStats {
        LegStats {
            packets_in: self.packets_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            packets_out: self.packets_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            packets_dropped: self.packets_dropped.load(Ordering::Relaxed),
            packets_lost: self.packets_lost.load(Ordering::Relaxed),
            jitter_us: self.jitter_us.load(Ordering::Relaxed),
        }
    }
}

/// What the RPC thread and the owning core share about a session.
#[derive(Debug)]
pub struct SessionShared {
    /// Microseconds since the engine's epoch of the last accepted packet (0 = none).
    pub last_packet_us: AtomicU64,
    pub legs: Vec<LegCounters>,
}

impl SessionShared {
    pub fn new(legs: usize) -> Arc<Self> {
        Arc::new(Self {
            last_packet_us: AtomicU64::new(0),
            legs: (0..legs).map(|_| LegCounters::default()).collect(),
        })
    }
}

/// A leg's peer address for one component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Peer {
    signalled: Option<SocketAddr>,
    /// Set by the first accepted packet; from then on the only accepted source.
    locked: Option<SocketAddr>,
}

impl Peer {
    fn destination(&self) -> Option<SocketAddr> {
        self.locked.or(self.signalled)
    }

    fn accept(&mut self, src: SocketAddr, mode: LatchMode) -> Result<(), DropReason> {
        if let Some(locked) = self.locked {
            return if locked == src {
                Ok(())
            } else {
                Err(DropReason::WrongSource)
            };
        }
        let ok = match (mode, self.signalled) {
            (LatchMode::Off, Some(s)) => s == src,
            (LatchMode::SignalledIp, Some(s)) => s.ip() == src.ip(),
            (LatchMode::AnyIp, _) => true,
            (_, None) => return Err(DropReason::Unsolicited),
        };
        if !ok {
            return Err(DropReason::WrongSource);
        }
        self.locked = Some(src);
        Ok(())
    }
}

/// The relay state of one leg.
#[derive(Debug)]
pub struct LegRelay {
    rtp: Peer,
    rtcp: Peer,
    latch: LatchMode,
    clock_rate: u32,
    receive: ReceiveStats,
}

impl LegRelay {
    pub fn new(
        remote_rtp: Option<SocketAddr>,
        remote_rtcp: Option<SocketAddr>,
        latch: LatchMode,
        clock_rate: Option<u32>,
    ) -> Self {
        Self {
            rtp: Peer {
                signalled: remote_rtp,
                locked: None,
            },
            rtcp: Peer {
                signalled: remote_rtcp,
                locked: None,
            },
            latch,
            clock_rate: clock_rate.unwrap_or(8000),
            receive: ReceiveStats::default(),
        }
    }

    /// New signalled addresses (absent = unchanged); unlocks what changed.
    pub fn update(&mut self, remote_rtp: Option<SocketAddr>, remote_rtcp: Option<SocketAddr>) {
        if let Some(a) = remote_rtp {
            self.rtp = Peer {
                signalled: Some(a),
                locked: None,
            };
        }
        if let Some(a) = remote_rtcp {
            self.rtcp = Peer {
                signalled: Some(a),
                locked: None,
            };
        }
    }

    fn peer(&mut self, c: Component) -> &mut Peer {
        match c {
            Component::Rtp => &mut self.rtp,
            Component::Rtcp => &mut self.rtcp,
        }
    }

    /// Where this leg sends `c` now, if anywhere.
    pub fn destination(&self, c: Component) -> Option<SocketAddr> {
        match c {
            Component::Rtp => self.rtp.destination(),
            Component::Rtcp => self.rtcp.destination(),
        }
    }
}

/// All legs of one session.
#[derive(Debug)]
pub struct SessionRelay {
    legs: Vec<LegRelay>,
    shared: Arc<SessionShared>,
}

impl SessionRelay {
    pub fn new(legs: Vec<LegRelay>, shared: Arc<SessionShared>) -> Self {
        debug_assert_eq!(legs.len(), shared.legs.len());
        Self { legs, shared }
    }

    pub fn shared(&self) -> &Arc<SessionShared> {
        &self.shared
    }

    pub fn leg_mut(&mut self, leg: usize) -> Option<&mut LegRelay> {
        self.legs.get_mut(leg)
    }

    /// Decide what to do with `packet`, received on `leg`'s `component` port from `src`.
    pub fn handle_packet(
        &mut self,
        arrival_us: u64,
        leg: usize,
        component: Component,
        src: SocketAddr,
        packet: &[u8],
    ) -> Verdict {
        let verdict = self.decide(arrival_us, leg, component, src, packet);
        let len = packet.len() as u64;
        if let Some(c) = self.shared.legs.get(leg) {
            match verdict {
                Verdict::Forward { .. } => {
                    bump(&c.packets_in, 1);
                    bump(&c.bytes_in, len);
                }
                Verdict::Drop(_) => bump(&c.packets_dropped, 1),
            }
        }
        if let Verdict::Forward { leg: out, .. } = verdict {
            if let Some(c) = self.shared.legs.get(out) {
                bump(&c.packets_out, 1);
                bump(&c.bytes_out, len);
            }
        }
        verdict
    }

    fn decide(
        &mut self,
        arrival_us: u64,
        leg: usize,
        component: Component,
        src: SocketAddr,
        packet: &[u8],
    ) -> Verdict {
        let Ok(kind) = classify(packet) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        // A plain leg's RTCP port carries only RTCP; RTP there is someone probing (its
        // RTP port may carry RTCP too, for rtcp-mux peers).
        if component == Component::Rtcp && matches!(kind, Kind::Rtp(_)) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let partner = leg ^ 1;
        let Some(this) = self.legs.get_mut(leg) else {
            return Verdict::Drop(DropReason::NoDestination);
        };
        let mode = this.latch;
        if let Err(reason) = this.peer(component).accept(src, mode) {
            return Verdict::Drop(reason);
        }
        // Accepted: this is the peer. Account it before looking for a destination, so
        // that a one-sided call still shows its inbound media.
        self.shared
            .last_packet_us
            .store(arrival_us.max(1), Ordering::Relaxed);
        if let Kind::Rtp(h) = kind {
            this.receive.on_packet(&h, arrival_us, this.clock_rate);
            if let Some(c) = self.shared.legs.get(leg) {
                c.packets_lost.store(this.receive.lost(), Ordering::Relaxed);
                c.jitter_us
                    .store(this.receive.jitter_us(this.clock_rate), Ordering::Relaxed);
            }
        }
        match self
            .legs
            .get(partner)
            .and_then(|p| p.destination(component))
        {
            Some(to) => Verdict::Forward {
                leg: partner,
                component,
                to,
            },
            None => Verdict::Drop(DropReason::NoDestination),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0u8; 172];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p[8..12].copy_from_slice(&7u32.to_be_bytes());
        p
    }

    const RR: [u8; 8] = [0x80, 201, 0, 1, 0, 0, 0, 7];

    fn relay(a: LatchMode, b: LatchMode) -> SessionRelay {
        SessionRelay::new(
            vec![
                LegRelay::new(
                    Some(addr("192.0.2.10:4000")),
                    Some(addr("192.0.2.10:4001")),
                    a,
                    None,
                ),
                LegRelay::new(
                    Some(addr("198.51.100.20:6000")),
                    Some(addr("198.51.100.20:6001")),
                    b,
                    None,
                ),
            ],
            SessionShared::new(2),
        )
    }

    #[test]
    fn forwards_both_ways_from_signalled_peers() {
        let mut r = relay(LatchMode::Off, LatchMode::Off);
        assert_eq!(
            r.handle_packet(1, 0, Component::Rtp, addr("192.0.2.10:4000"), &rtp(1)),
            Verdict::Forward {
                leg: 1,
                component: Component::Rtp,
                to: addr("198.51.100.20:6000")
            }
        );
        assert_eq!(
            r.handle_packet(2, 1, Component::Rtcp, addr("198.51.100.20:6001"), &RR),
            Verdict::Forward {
                leg: 0,
                component: Component::Rtcp,
                to: addr("192.0.2.10:4001")
            }
        );
        let s0 = r.shared().legs[0].snapshot();
        let s1 = r.shared().legs[1].snapshot();
        assert_eq!((s0.packets_in, s0.bytes_in, s0.packets_out), (1, 172, 1));
        assert_eq!((s1.packets_in, s1.packets_out, s1.bytes_out), (1, 1, 172));
    }

    #[test]
    fn strangers_are_dropped_and_never_become_destinations() {
        let mut r = relay(LatchMode::Off, LatchMode::SignalledIp);
        let attacker = addr("203.0.113.66:5555");
        for leg in 0..2 {
            assert_eq!(
                r.handle_packet(1, leg, Component::Rtp, attacker, &rtp(1)),
                Verdict::Drop(DropReason::WrongSource)
            );
            assert_eq!(
                r.handle_packet(1, leg, Component::Rtcp, attacker, &RR),
                Verdict::Drop(DropReason::WrongSource)
            );
        }
        // Same IP as signalled but another port: refused on an `Off` leg ...
        assert_eq!(
            r.handle_packet(2, 0, Component::Rtp, addr("192.0.2.10:4002"), &rtp(1)),
            Verdict::Drop(DropReason::WrongSource)
        );
        // ... learned on a `SignalledIp` leg, then locked.
        let natted = addr("198.51.100.20:7777");
        assert!(matches!(
            r.handle_packet(3, 1, Component::Rtp, natted, &rtp(1)),
            Verdict::Forward { .. }
        ));
        assert_eq!(
            r.handle_packet(4, 1, Component::Rtp, addr("198.51.100.20:6000"), &rtp(2)),
            Verdict::Drop(DropReason::WrongSource),
            "after locking, even the signalled port is another source"
        );
        // Media for leg 1 now goes to the learned address, not the signalled one.
        assert_eq!(
            r.handle_packet(5, 0, Component::Rtp, addr("192.0.2.10:4000"), &rtp(1)),
            Verdict::Forward {
                leg: 1,
                component: Component::Rtp,
                to: natted
            }
        );
        assert_eq!(r.shared().legs[0].snapshot().packets_dropped, 3);
    }

    #[test]
    fn any_ip_latches_the_first_source_and_locks() {
        let mut r = SessionRelay::new(
            vec![
                LegRelay::new(None, None, LatchMode::AnyIp, None),
                LegRelay::new(Some(addr("198.51.100.20:6000")), None, LatchMode::Off, None),
            ],
            SessionShared::new(2),
        );
        // Nothing to send to leg 0 until its peer spoke.
        assert_eq!(
            r.handle_packet(1, 1, Component::Rtp, addr("198.51.100.20:6000"), &rtp(1)),
            Verdict::Drop(DropReason::NoDestination)
        );
        let peer = addr("10.1.2.3:40000");
        assert!(matches!(
            r.handle_packet(2, 0, Component::Rtp, peer, &rtp(1)),
            Verdict::Forward { .. }
        ));
        assert_eq!(
            r.handle_packet(3, 0, Component::Rtp, addr("10.9.9.9:1"), &rtp(2)),
            Verdict::Drop(DropReason::WrongSource)
        );
        assert_eq!(
            r.handle_packet(4, 1, Component::Rtp, addr("198.51.100.20:6000"), &rtp(2)),
            Verdict::Forward {
                leg: 0,
                component: Component::Rtp,
                to: peer
            }
        );
    }

    #[test]
    fn unsolicited_without_signalled_address_and_malformed_are_counted() {
        let mut r = SessionRelay::new(
            vec![
                LegRelay::new(None, None, LatchMode::Off, None),
                LegRelay::new(None, None, LatchMode::SignalledIp, None),
            ],
            SessionShared::new(2),
        );
        assert_eq!(
            r.handle_packet(1, 0, Component::Rtp, addr("192.0.2.1:1"), &rtp(1)),
            Verdict::Drop(DropReason::Unsolicited)
        );
        assert_eq!(
            r.handle_packet(1, 1, Component::Rtp, addr("192.0.2.1:1"), &rtp(1)),
            Verdict::Drop(DropReason::Unsolicited)
        );
        assert_eq!(
            r.handle_packet(1, 0, Component::Rtp, addr("192.0.2.1:1"), &[0x80, 0]),
            Verdict::Drop(DropReason::Malformed)
        );
        assert_eq!(
            r.handle_packet(1, 0, Component::Rtcp, addr("192.0.2.1:1"), &rtp(1)),
            Verdict::Drop(DropReason::Malformed),
            "RTP on an RTCP port"
        );
        assert_eq!(
            r.shared().last_packet_us.load(Ordering::Relaxed),
            0,
            "drops are not activity"
        );
    }

    #[test]
    fn resignalling_unlocks() {
        let mut r = relay(LatchMode::SignalledIp, LatchMode::Off);
        let first = addr("192.0.2.10:4444");
        assert!(matches!(
            r.handle_packet(1, 0, Component::Rtp, first, &rtp(1)),
            Verdict::Forward { .. }
        ));
        r.leg_mut(0)
            .unwrap()
            .update(Some(addr("192.0.2.99:5000")), None);
        assert_eq!(
            r.handle_packet(2, 0, Component::Rtp, first, &rtp(2)),
            Verdict::Drop(DropReason::WrongSource)
        );
        assert!(matches!(
            r.handle_packet(3, 0, Component::Rtp, addr("192.0.2.99:5002"), &rtp(3)),
            Verdict::Forward { .. }
        ));
    }

    #[test]
    fn loss_and_activity_are_tracked() {
        let mut r = relay(LatchMode::Off, LatchMode::Off);
        for seq in [1u16, 2, 5, 6] {
            r.handle_packet(
                u64::from(seq) * 20_000,
                0,
                Component::Rtp,
                addr("192.0.2.10:4000"),
                &rtp(seq),
            );
        }
        assert_eq!(r.shared().legs[0].snapshot().packets_lost, 2);
        assert_eq!(r.shared().last_packet_us.load(Ordering::Relaxed), 120_000);
    }
}
