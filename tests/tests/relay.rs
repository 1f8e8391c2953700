//! The packet relay through the real `sbc-media`, sessions created over the RPC, on
//! both packet engines: RTP and RTCP both ways byte-exact; an attacker spraying the
//! whole port range during and after latching gets nothing through and nothing back;
//! inactivity timeout, port exhaustion and delete leave the port pool full.

#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait in real time"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sbc_e2e::{Appliance, Proc, Settings, metric, wait_for};
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::client::{CallError, RpcClient};
use sbc_shared::rpc::msg::{
    EndReason, ErrorCode, Event, Hello, LatchMode, LegSpec, PROTOCOL_VERSION, PeerRole, Request,
    Response, SessionInfo, SessionSpec,
};

struct Peer {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Peer {
    fn new(ip: &str) -> Peer {
        let rtp = UdpSocket::bind(format!("{ip}:0")).unwrap();
        let rtcp = UdpSocket::bind(format!("{ip}:0")).unwrap();
        for s in [&rtp, &rtcp] {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
        }
        Peer { rtp, rtcp }
    }
    fn rtp_addr(&self) -> SocketAddr {
        self.rtp.local_addr().unwrap()
    }
    fn rtcp_addr(&self) -> SocketAddr {
        self.rtcp.local_addr().unwrap()
    }
}

fn rtp_packet(seq: u16, ssrc: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; 172];
    p[0] = 0x80;
    p[1] = 0; // PCMU
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), from))
}

async fn control(app: &Appliance) -> (RpcClient, tokio::sync::mpsc::Receiver<Event>) {
    let stream = tokio::net::UnixStream::connect(&app.media_socket)
        .await
        .unwrap();
    let (r, w) = stream.into_split();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        software: "relay-test".into(),
        role: PeerRole::Control,
        owner: OwnerTag("ctl-relay".into()),
    };
    RpcClient::handshake(r, w, hello, Duration::from_secs(5))
        .await
        .unwrap()
}

fn leg(remote: &Peer, latch: LatchMode) -> LegSpec {
    LegSpec {
        interface: "lo".into(),
        remote_rtp: Some(remote.rtp_addr()),
        remote_rtcp: Some(remote.rtcp_addr()),
        latch,
        clock_rate: Some(8000),
    }
}

async fn create(
    client: &RpcClient,
    legs: Vec<LegSpec>,
    inactivity_ms: Option<u64>,
) -> Result<SessionInfo, CallError> {
    let spec = SessionSpec {
        owner_data: String::new(),
        legs,
        inactivity_timeout_ms: inactivity_ms,
    };
    match client.call(Request::CreateSession(spec)).await? {
        Response::Session(s) => Ok(s),
        other => panic!("unexpected {other:?}"),
    }
}

fn start(engine: &str, ports: u16) -> (Appliance, Proc) {
    let app = Appliance::new(&Settings {
        ports,
        media_extra: format!("  engine: {engine}\n"),
        ..Settings::default()
    });
    let media = app.start_media();
    let page = app.media_page();
    assert_eq!(
        metric(
            &page,
            &format!("sbc_media_engine_info{{engine=\"{engine}\"}}")
        ),
        Some(1.0),
        "the {engine} engine must be the one running; media log:\n{}",
        media.log_text()
    );
    (app, media)
}

fn pool_is_full(app: &Appliance) {
    let total = f64::from(app.ports.1 - app.ports.0 + 1);
    let page = wait_for(Duration::from_secs(5), "ports back in the pool", || {
        let page = app.media_page();
        (metric(&page, "sbc_media_ports_in_use{interface=\"lo\"}")? == 0.0).then_some(page)
    });
    assert_eq!(
        metric(&page, "sbc_media_ports_free{interface=\"lo\"}"),
        Some(total)
    );
    // And really free: every port of the range can be bound again.
    wait_for(Duration::from_secs(5), "every media port bindable", || {
        (app.ports.0..=app.ports.1)
            .all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
            .then_some(())
    });
}

async fn relays_rtp_and_rtcp_both_ways_byte_exact(engine: &str) {
    let (app, _media) = start(engine, 20);
    let (client, _events) = control(&app).await;
    let a = Peer::new("127.0.0.1");
    let b = Peer::new("127.0.0.1");
    let s = create(
        &client,
        vec![leg(&a, LatchMode::Off), leg(&b, LatchMode::Off)],
        None,
    )
    .await
    .unwrap();
    let (l0, l1) = (&s.legs[0], &s.legs[1]);

    for i in 0..200u16 {
        let p = rtp_packet(i, 0xA, i as u8);
        a.rtp.send_to(&p, l0.local_rtp).unwrap();
        let (got, from) = recv(&b.rtp).expect("A→B RTP arrives");
        assert_eq!(got, p, "payload, SSRC and sequence untouched");
        assert_eq!(from, l1.local_rtp, "sent from the other leg's RTP port");

        let q = rtp_packet(i, 0xB, !(i as u8));
        b.rtp.send_to(&q, l1.local_rtp).unwrap();
        let (got, from) = recv(&a.rtp).expect("B→A RTP arrives");
        assert_eq!(got, q);
        assert_eq!(from, l0.local_rtp);
    }
    let rr = rtcp_rr(0xA);
    a.rtcp.send_to(&rr, l0.local_rtcp).unwrap();
    let (got, from) = recv(&b.rtcp).expect("A→B RTCP arrives");
    assert_eq!((got, from), (rr.clone(), l1.local_rtcp));
    let rr = rtcp_rr(0xB);
    b.rtcp.send_to(&rr, l1.local_rtcp).unwrap();
    let (got, from) = recv(&a.rtcp).expect("B→A RTCP arrives");
    assert_eq!((got, from), (rr, l0.local_rtcp));

    // Live counters over the RPC.
    let Response::Session(info) = client
        .call(Request::GetSession { session: s.id })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(info.legs[0].stats.packets_in, 201);
    assert_eq!(info.legs[0].stats.packets_out, 201);
    assert_eq!(info.legs[1].stats.bytes_in, 200 * 172 + 8);
    assert_eq!(info.legs[0].stats.packets_lost, 0);

    let Response::Deleted { legs, .. } = client
        .call(Request::DeleteSession { session: s.id })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(legs[1].packets_in, 201);
    pool_is_full(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_relays_rtp_and_rtcp_both_ways_byte_exact() {
    relays_rtp_and_rtcp_both_ways_byte_exact("portable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_relays_rtp_and_rtcp_both_ways_byte_exact() {
    relays_rtp_and_rtcp_both_ways_byte_exact("io_uring").await;
}

/// The RTP Bleed / RTP Inject attacker: sprays every port of the range from another
/// address, before and after the legitimate peers latched.
async fn attacker_gets_nothing(engine: &str) {
    let (app, _media) = start(engine, 40);
    let (client, _events) = control(&app).await;
    let a = Peer::new("127.0.0.1");
    let b = Peer::new("127.0.0.1");
    // Leg 0 learns its peer's port from the signalled IP (symmetric RTP); leg 1 is strict.
    let s = create(
        &client,
        vec![leg(&a, LatchMode::SignalledIp), leg(&b, LatchMode::Off)],
        None,
    )
    .await
    .unwrap();
    let attacker = UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 is loopback");
    attacker
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let same_host_attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    same_host_attacker
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let spray = |round: u16| {
        for port in app.ports.0..=app.ports.1 {
            for (i, sock) in [&attacker, &same_host_attacker].into_iter().enumerate() {
                let _ = sock.send_to(
                    &rtp_packet(round, 0xBAD0 + i as u32, 0xEE),
                    ("127.0.0.1", port),
                );
                let _ = sock.send_to(&rtcp_rr(0xBAD0), ("127.0.0.1", port));
            }
        }
    };
    // During latching: the stranger on 127.0.0.2 sprays before the legitimate peers
    // spoke. It is not the signalled IP, so it cannot latch anything.
    let (l0, l1) = (&s.legs[0], &s.legs[1]);
    for port in app.ports.0..=app.ports.1 {
        let _ = attacker.send_to(&rtp_packet(0, 0xBAD0, 0xEE), ("127.0.0.1", port));
        let _ = attacker.send_to(&rtcp_rr(0xBAD0), ("127.0.0.1", port));
    }
    // The legitimate peers speak (RTP and RTCP), latching leg 0 to A's ports.
    let first = rtp_packet(1, 0xA, 1);
    a.rtp.send_to(&first, l0.local_rtp).unwrap();
    assert_eq!(recv(&b.rtp).unwrap().0, first);
    a.rtcp.send_to(&rtcp_rr(0xA), l0.local_rtcp).unwrap();
    assert_eq!(recv(&b.rtcp).unwrap().0, rtcp_rr(0xA));

    // After latching: both strangers, including one on the peers' own IP, spray.
    for round in 0..5 {
        spray(round);
        // Legitimate traffic keeps flowing both ways during the attack.
        let p = rtp_packet(100 + round, 0xA, 2);
        a.rtp.send_to(&p, l0.local_rtp).unwrap();
        let q = rtp_packet(100 + round, 0xB, 3);
        b.rtp.send_to(&q, l1.local_rtp).unwrap();
        assert_eq!(recv(&b.rtp).unwrap().0, p);
        assert_eq!(recv(&a.rtp).unwrap().0, q);
    }
    // Nothing the attacker sent reached a peer, nothing was sent to the attacker.
    for sock in [&a.rtp, &a.rtcp, &b.rtp, &b.rtcp] {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Some((pkt, _)) = recv(sock) {
            let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
            panic!("a peer received an injected packet: ssrc {ssrc:#x}");
        }
    }
    assert!(
        recv(&attacker).is_none(),
        "the attacker must receive nothing"
    );
    assert!(
        recv(&same_host_attacker).is_none(),
        "the same-host attacker must receive nothing"
    );

    let page = app.media_page();
    let wrong = metric(
        &page,
        "sbc_media_packets_dropped_total{reason=\"wrong_source\"}",
    )
    .unwrap();
    let malformed = metric(
        &page,
        "sbc_media_packets_dropped_total{reason=\"malformed\"}",
    )
    .unwrap();
    // The first spray hit the session's 4 ports with RTP + RTCP from one attacker (8);
    // each of 5 later rounds with two attackers (16). RTP sent to an RTCP port is
    // `malformed` (2 ports × 1 packet per attacker); everything else `wrong_source`.
    assert_eq!(wrong + malformed, 8.0 + 5.0 * 16.0, "{page}");
    assert_eq!(malformed, 2.0 + 5.0 * 4.0, "{page}");
    client
        .call(Request::DeleteSession { session: s.id })
        .await
        .unwrap();
    pool_is_full(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_attacker_spraying_the_range_gets_nothing() {
    attacker_gets_nothing("portable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_attacker_spraying_the_range_gets_nothing() {
    attacker_gets_nothing("io_uring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_timeout_ends_the_session_and_tells_the_owner() {
    let (app, _media) = start("portable", 20);
    let (client, mut events) = control(&app).await;
    let a = Peer::new("127.0.0.1");
    let b = Peer::new("127.0.0.1");
    let quiet = create(
        &client,
        vec![leg(&a, LatchMode::Off), leg(&b, LatchMode::Off)],
        Some(1500),
    )
    .await
    .unwrap();
    let talking = create(
        &client,
        vec![leg(&a, LatchMode::Off), leg(&b, LatchMode::Off)],
        Some(1500),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut seq = 0;
    // Keep one session alive with packets for 3 s; the other stays silent.
    let event = loop {
        a.rtp
            .send_to(&rtp_packet(seq, 0xC, 0), talking.legs[0].local_rtp)
            .unwrap();
        seq += 1;
        let _ = recv(&b.rtp);
        if let Ok(e) = events.try_recv() {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no session_ended event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Event::SessionEnded {
        session, reason, ..
    } = event
    else {
        panic!("{event:?}")
    };
    assert_eq!((session, reason), (quiet.id, EndReason::Inactive));
    assert!(started.elapsed() >= Duration::from_millis(1400));
    let err = client
        .call(Request::GetSession { session: quiet.id })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Rpc(ref e) if e.code == ErrorCode::UnknownSession),
        "{err:?}"
    );
    // The talking one is alive after more than its timeout.
    assert!(
        client
            .call(Request::GetSession {
                session: talking.id
            })
            .await
            .is_ok()
    );
    let page = app.media_page();
    assert_eq!(
        metric(
            &page,
            "sbc_media_sessions_reaped_total{reason=\"inactive\"}"
        ),
        Some(1.0)
    );
    client
        .call(Request::DeleteSession {
            session: talking.id,
        })
        .await
        .unwrap();
    pool_is_full(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_exhaustion_is_an_rpc_error_and_counted() {
    // 8 ports = 4 RTP/RTCP pairs = 2 two-leg sessions.
    let (app, _media) = start("portable", 8);
    let (client, _events) = control(&app).await;
    let a = Peer::new("127.0.0.1");
    let b = Peer::new("127.0.0.1");
    let s1 = create(
        &client,
        vec![leg(&a, LatchMode::Off), leg(&b, LatchMode::Off)],
        None,
    )
    .await
    .unwrap();
    let s2 = create(
        &client,
        vec![leg(&a, LatchMode::Off), leg(&b, LatchMode::Off)],
        None,
    )
    .await
    .unwrap();
    let err = create(
        &client,
        vec![leg(&a, LatchMode::Off), leg(&b, LatchMode::Off)],
        None,
    )
    .await
    .unwrap_err();
    let CallError::Rpc(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, ErrorCode::PortsExhausted);
    assert!(e.message.contains("lo"), "{}", e.message);
    let page = app.media_page();
    assert_eq!(
        metric(
            &page,
            "sbc_media_port_allocation_failures_total{interface=\"lo\",reason=\"exhausted\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "sbc_media_ports_free{interface=\"lo\"}"),
        Some(0.0)
    );
    // A failed create leaves nothing half-allocated.
    assert_eq!(
        metric(&page, "sbc_media_sessions{state=\"owned\"}"),
        Some(2.0)
    );
    for s in [s1, s2] {
        client
            .call(Request::DeleteSession { session: s.id })
            .await
            .unwrap();
    }
    pool_is_full(&app);
    // And the freed ports serve a new session at once.
    let s3 = create(
        &client,
        vec![leg(&a, LatchMode::Off), leg(&b, LatchMode::Off)],
        None,
    )
    .await
    .unwrap();
    client
        .call(Request::DeleteSession { session: s3.id })
        .await
        .unwrap();
    pool_is_full(&app);
}
