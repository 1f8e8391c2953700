//! Both packet engines on loopback, one test body for each: a session's RTP and RTCP
//! are relayed byte-exact both ways (one packet, then 1000 each way); an attacker
//! spraying every media port gets nothing through and nothing back, and is counted as
//! `wrong_source`; removing the session closes its sockets; stopping the engine returns.
//! A last test prints each engine's throughput (a sanity check, not an assertion):
//! `cargo test --release -p sbc-media --test engine_uring -- --nocapture`.

#![allow(clippy::disallowed_methods, reason = "socket tests wait in real time")]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed socket call fails the test"
)]

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use sbc_media::clock;
use sbc_media::engine::Engine;
use sbc_media::engine::core::{CoreCommand, CoreCounters};
use sbc_media::engine::ports::{BoundPair, bind_pair};
use sbc_media::proto::relay::{DropReason, LegRelay, SessionRelay, SessionShared};
use sbc_shared::config::EngineKind;
use sbc_shared::ids::SessionId;
use sbc_shared::rpc::msg::LatchMode;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SESSION: SessionId = SessionId(1);
/// How long any one expected packet may take.
const PACKET_WAIT: Duration = Duration::from_secs(2);
/// How long we listen for packets that must not come.
const SILENCE: Duration = Duration::from_millis(200);

/// The engines pin their worker to CPU 0 and the throughput test measures: one test at
/// a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A valid RTP packet (v2, PT 0, SSRC 7) of 172 bytes whose payload depends on `seq`.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 172];
    p[0] = 0x80;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&7u32.to_be_bytes());
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seq as u8);
    }
    p
}

/// An RTCP receiver report without report blocks, from SSRC `ssrc`.
fn rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

fn peer_socket() -> UdpSocket {
    let s = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    s.set_read_timeout(Some(PACKET_WAIT)).unwrap();
    s
}

/// The next datagram on `s`, or `None` once its read timeout passes.
fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, src)) => return Some((buf[..n].to_vec(), src)),
            // With SO_RCVTIMEO set, a signal interrupts the wait instead of restarting it.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(e) => panic!("recv_from: {e}"),
        }
    }
}

/// Nothing arrives on `s` for a while.
fn assert_silent(s: &UdpSocket, who: &str) {
    s.set_read_timeout(Some(SILENCE)).unwrap();
    if let Some((bytes, src)) = recv(s) {
        panic!("{who} received {} bytes from {src}", bytes.len());
    }
    s.set_read_timeout(Some(PACKET_WAIT)).unwrap();
}

/// Bind a media port pair as the node does (no DSCP marking).
fn bind_media(rtp_port: u16, rtcp_port: u16) -> std::io::Result<BoundPair> {
    bind_pair(LOOPBACK, rtp_port, rtcp_port, None)
}

/// A media port pair (RTP on an even-or-odd discovered port, RTCP on the next one),
/// with receive buffers big enough for bursts.
fn bind_media_pair() -> BoundPair {
    for _ in 0..200 {
        let port = UdpSocket::bind((LOOPBACK, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(next) = port.checked_add(1) else {
            continue;
        };
        if let Ok(pair) = bind_media(port, next) {
            for s in [&pair.rtp, &pair.rtcp] {
                socket2::SockRef::from(s)
                    .set_recv_buffer_size(4 << 20)
                    .unwrap();
            }
            return pair;
        }
    }
    panic!("no free port pair on {LOOPBACK}");
}

/// One peer's RTP and RTCP sockets.
struct Peer {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            rtp: peer_socket(),
            rtcp: peer_socket(),
        }
    }

    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (
            self.rtp.local_addr().unwrap(),
            self.rtcp.local_addr().unwrap(),
        )
    }
}

/// A running engine relaying one session between peers A (leg 0) and B (leg 1).
struct Call {
    engine: Engine,
    a: Peer,
    b: Peer,
    /// The media ports facing A: (RTP, RTCP).
    leg0: (SocketAddr, SocketAddr),
    /// The media ports facing B.
    leg1: (SocketAddr, SocketAddr),
}

fn start_call(kind: EngineKind) -> Call {
    let engine = Engine::start(kind, &[0], clock::now()).unwrap();
    assert_eq!(engine.kind(), kind, "asked for {kind:?}");
    let (a, b) = (Peer::new(), Peer::new());
    let (m0, m1) = (bind_media_pair(), bind_media_pair());
    let leg0 = (m0.rtp.local_addr().unwrap(), m0.rtcp.local_addr().unwrap());
    let leg1 = (m1.rtp.local_addr().unwrap(), m1.rtcp.local_addr().unwrap());
    let ((a_rtp, a_rtcp), (b_rtp, b_rtcp)) = (a.addrs(), b.addrs());
    let relay = SessionRelay::new(
        vec![
            LegRelay::new(Some(a_rtp), Some(a_rtcp), LatchMode::Off, None),
            LegRelay::new(Some(b_rtp), Some(b_rtcp), LatchMode::Off, None),
        ],
        SessionShared::new(2),
    );
    let sockets = vec![(m0.rtp, m0.rtcp), (m1.rtp, m1.rtcp)];
    engine.send(
        0,
        CoreCommand::Add {
            id: SESSION,
            sockets,
            relay,
        },
    );
    wait_for("the session to be added", || {
        counters(&engine).sessions.load(Ordering::Relaxed) == 1
    });
    Call {
        engine,
        a,
        b,
        leg0,
        leg1,
    }
}

fn counters(engine: &Engine) -> &CoreCounters {
    engine.counters().next().expect("one core").1
}

fn wrong_source(engine: &Engine) -> u64 {
    counters(engine).dropped[DropReason::WrongSource.index()].load(Ordering::Relaxed)
}

/// Poll `done` for up to two seconds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = clock::now() + Duration::from_secs(2);
    while !done() {
        assert!(clock::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `packet` from `from` to media port `to` arrives byte-exact at `at`, sent by media
/// port `via`.
fn relays(packet: &[u8], from: &UdpSocket, to: SocketAddr, at: &UdpSocket, via: SocketAddr) {
    from.send_to(packet, to).unwrap();
    let (bytes, src) = recv(at)
        .unwrap_or_else(|| panic!("nothing relayed from {to} to {}", at.local_addr().unwrap()));
    assert_eq!(src, via, "relayed from the partner leg's port");
    assert_eq!(bytes, packet, "relayed byte-exact");
}

/// `n` RTP packets from `from` to media port `to` all arrive byte-exact at `at`, sent
/// in windows so that no socket buffer overflows.
fn relays_many(n: u16, from: &UdpSocket, to: SocketAddr, at: &UdpSocket, via: SocketAddr) {
    const WINDOW: u16 = 50;
    let mut next = 0;
    while next < n {
        let window = WINDOW.min(n - next);
        for seq in next..next + window {
            from.send_to(&rtp(seq), to).unwrap();
        }
        let mut got: Vec<Vec<u8>> = (0..window)
            .map(|i| {
                let (bytes, src) =
                    recv(at).unwrap_or_else(|| panic!("only {} of {n} packets arrived", next + i));
                assert_eq!(src, via);
                bytes
            })
            .collect();
        got.sort_by_key(|p| u16::from_be_bytes([p[2], p[3]]));
        for (i, p) in got.iter().enumerate() {
            assert_eq!(
                *p,
                rtp(next + i as u16),
                "packet {} relayed byte-exact, once",
                next + i as u16
            );
        }
        next += window;
    }
}

/// Stop the engine, within a bounded wait.
fn stop_engine(engine: Engine) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        drop(engine);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the engine stops within 5 s");
}

fn relay_and_filter(kind: EngineKind) {
    let _serial = serial();
    let Call {
        engine,
        a,
        b,
        leg0,
        leg1,
    } = start_call(kind);

    // One packet each way on each component.
    relays(&rtp(1), &a.rtp, leg0.0, &b.rtp, leg1.0);
    relays(&rtp(2), &b.rtp, leg1.0, &a.rtp, leg0.0);
    relays(&rr(0xa), &a.rtcp, leg0.1, &b.rtcp, leg1.1);
    relays(&rr(0xb), &b.rtcp, leg1.1, &a.rtcp, leg0.1);

    // A thousand each way.
    relays_many(1000, &a.rtp, leg0.0, &b.rtp, leg1.0);
    relays_many(1000, &b.rtp, leg1.0, &a.rtp, leg0.0);
    let c = counters(&engine);
    assert_eq!(c.packets_out.load(Ordering::Relaxed), 2004);
    assert_eq!(c.send_errors.load(Ordering::Relaxed), 0);

    // An attacker sprays every media port: nothing forwarded, nothing back, all counted.
    let attacker = peer_socket();
    let before = wrong_source(&engine);
    let out_before = c.packets_out.load(Ordering::Relaxed);
    for round in 0..25u16 {
        attacker.send_to(&rtp(round), leg0.0).unwrap();
        attacker.send_to(&rr(0x66), leg0.1).unwrap();
        attacker.send_to(&rtp(round), leg1.0).unwrap();
        attacker.send_to(&rr(0x66), leg1.1).unwrap();
    }
    wait_for("100 wrong_source drops", || {
        wrong_source(&engine) == before + 100
    });
    assert_eq!(
        c.packets_out.load(Ordering::Relaxed),
        out_before,
        "nothing forwarded"
    );
    assert_silent(&attacker, "the attacker");
    for (s, who) in [
        (&a.rtp, "A's RTP"),
        (&a.rtcp, "A's RTCP"),
        (&b.rtp, "B's RTP"),
        (&b.rtcp, "B's RTCP"),
    ] {
        assert_silent(s, who);
    }
    // The peers still talk.
    relays(&rtp(3), &a.rtp, leg0.0, &b.rtp, leg1.0);

    // Removal closes the media sockets: their ports can be bound again.
    engine.send(0, CoreCommand::Remove { id: SESSION });
    wait_for("the media ports to be free", || {
        bind_media(leg0.0.port(), leg0.1.port()).is_ok()
            && bind_media(leg1.0.port(), leg1.1.port()).is_ok()
    });
    assert_eq!(counters(&engine).sessions.load(Ordering::Relaxed), 0);
    stop_engine(engine);
}

#[test]
fn io_uring_relays_and_filters() {
    relay_and_filter(EngineKind::IoUring);
}

#[test]
fn portable_relays_and_filters() {
    relay_and_filter(EngineKind::Portable);
}

/// Sessions come and go while media flows: every removal frees its ports, the survivors
/// keep relaying.
fn churn(kind: EngineKind) {
    let _serial = serial();
    let Call {
        engine,
        a,
        b,
        leg0,
        leg1,
    } = start_call(kind);
    for round in 0..20u64 {
        let (p, q) = (Peer::new(), Peer::new());
        let (m0, m1) = (bind_media_pair(), bind_media_pair());
        let (in0, in1) = (m0.rtp.local_addr().unwrap(), m1.rtp.local_addr().unwrap());
        let ports = [
            in0.port(),
            m0.rtcp.local_addr().unwrap().port(),
            in1.port(),
            m1.rtcp.local_addr().unwrap().port(),
        ];
        let ((p_rtp, p_rtcp), (q_rtp, q_rtcp)) = (p.addrs(), q.addrs());
        let relay = SessionRelay::new(
            vec![
                LegRelay::new(Some(p_rtp), Some(p_rtcp), LatchMode::Off, None),
                LegRelay::new(Some(q_rtp), Some(q_rtcp), LatchMode::Off, None),
            ],
            SessionShared::new(2),
        );
        let id = SessionId(100 + round);
        engine.send(
            0,
            CoreCommand::Add {
                id,
                sockets: vec![(m0.rtp, m0.rtcp), (m1.rtp, m1.rtcp)],
                relay,
            },
        );
        // Media in flight on the new session as it is removed.
        for seq in 0..20 {
            p.rtp.send_to(&rtp(seq), in0).unwrap();
        }
        relays(&rtp(1000), &q.rtp, in1, &p.rtp, in0);
        engine.send(0, CoreCommand::Remove { id });
        wait_for("a removed session's ports to be free", || {
            bind_media(ports[0], ports[1]).is_ok() && bind_media(ports[2], ports[3]).is_ok()
        });
        relays(&rtp(round as u16), &a.rtp, leg0.0, &b.rtp, leg1.0);
    }
    stop_engine(engine);
}

#[test]
fn io_uring_survives_session_churn() {
    churn(EngineKind::IoUring);
}

#[test]
fn portable_survives_session_churn() {
    churn(EngineKind::Portable);
}

/// Throughput sanity check, printed: one peer sends as fast as it can, the other counts
/// what the engine relayed.
#[test]
fn throughput_sanity() {
    let _serial = serial();
    let n: u32 = if cfg!(debug_assertions) {
        20_000
    } else {
        200_000
    };
    for kind in [EngineKind::IoUring, EngineKind::Portable] {
        let Call {
            engine,
            a,
            b,
            leg0,
            leg1: _,
        } = start_call(kind);
        socket2::SockRef::from(&b.rtp)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        b.rtp
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let start = clock::now();
        let sender = std::thread::spawn(move || {
            let mut packet = rtp(0);
            for i in 0..n {
                packet[2..4].copy_from_slice(&(i as u16).to_be_bytes());
                let _ = a.rtp.send_to(&packet, leg0.0);
            }
            clock::now()
        });
        let mut received = 0u32;
        let mut last = start;
        let mut buf = [0u8; 2048];
        loop {
            match b.rtp.recv(&mut buf) {
                Ok(len) => {
                    assert_eq!(len, 172);
                    received += 1;
                    last = clock::now();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let sent_at = sender.join().unwrap();
        let c = counters(&engine);
        let (pin, pout, errors) = (
            c.packets_in.load(Ordering::Relaxed),
            c.packets_out.load(Ordering::Relaxed),
            c.send_errors.load(Ordering::Relaxed),
        );
        let secs = |t: Instant| t.saturating_duration_since(start).as_secs_f64().max(1e-9);
        println!(
            "{:>8}: sent {n} in {:.3} s ({:.0} pkt/s); engine in {pin}, out {pout}, send errors {errors}; peer got {received} \
             ({:.1}% loss) in {:.3} s = {:.0} pkt/s relayed",
            kind.as_str(),
            secs(sent_at),
            f64::from(n) / secs(sent_at),
            100.0 * f64::from(n - received) / f64::from(n),
            secs(last),
            f64::from(received) / secs(last),
        );
        assert!(received > 0, "{kind:?} relayed nothing");
        stop_engine(engine);
    }
}
