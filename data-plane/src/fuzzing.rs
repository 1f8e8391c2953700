//! Entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/rtp_header.rs`,
//! `rtcp.rs`) and the stable corpus replay test (`data-plane/tests/fuzz_corpus.rs`).
//! Each feeds arbitrary bytes to what the data plane parses from the network and checks
//! properties beyond "does not panic".

use std::net::SocketAddr;

use sbc_shared::rpc::msg::LatchMode;

use crate::proto::relay::{Component, LegRelay, SessionRelay, SessionShared, Verdict};
use crate::proto::rtp::{Kind, ReceiveStats, classify};

/// RTP header classification and receive statistics.
pub fn rtp_header(data: &[u8]) {
    let mut stats = ReceiveStats::default();
    // Treat the input as a sequence of packets: 2-byte length prefix each.
    let mut rest = data;
    let mut t = 0u64;
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (pkt, tail) = tail.split_at(len);
        rest = tail;
        t += 20_000;
        if let Ok(Kind::Rtp(h)) = classify(pkt) {
            assert!(
                pkt.len() >= 12,
                "RTP accepted only with a full fixed header"
            );
            stats.on_packet(&h, t, 48_000);
            assert!(stats.lost() <= stats.expected());
        }
    }
}

/// A whole relay session fed arbitrary datagrams on arbitrary legs and components.
pub fn rtcp(data: &[u8]) {
    let peer_a: SocketAddr = SocketAddr::from(([192, 0, 2, 1], 4000));
    let peer_b: SocketAddr = SocketAddr::from(([198, 51, 100, 2], 6000));
    let mut relay = SessionRelay::new(
        vec![
            LegRelay::new(Some(peer_a), None, LatchMode::SignalledIp, None),
            LegRelay::new(Some(peer_b), None, LatchMode::Off, Some(8000)),
        ],
        SessionShared::new(2),
    );
    let mut rest = data;
    let mut t = 0u64;
    while let Some((head, tail)) = rest.split_first_chunk::<3>() {
        let len = usize::from(head[0]).min(tail.len());
        let (pkt, tail) = tail.split_at(len);
        rest = tail;
        t += 1000;
        let leg = usize::from(head[1] & 1);
        let component = if head[1] & 2 == 0 {
            Component::Rtp
        } else {
            Component::Rtcp
        };
        let src = SocketAddr::from(([192, 0, 2, head[2] & 1], 4000 + u16::from(head[2] >> 4)));
        if let Verdict::Forward { leg: out, .. } = relay.handle_packet(t, leg, component, src, pkt)
        {
            assert_ne!(out, leg, "a leg never forwards to itself");
            assert!(classify(pkt).is_ok(), "only RTP/RTCP is forwarded");
        }
    }
}
