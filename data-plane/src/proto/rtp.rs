//! RTP and RTCP header views (RFC 3550) and receive statistics (RFC 3550 A.1, A.8).
//!
//! Parsing is a bounds-checked look at the fixed header only: the relay forwards
//! payloads untouched, so it needs the version, payload type, sequence number,
//! timestamp and SSRC for statistics and to tell RTP from RTCP (RFC 5761 §4), nothing
//! more. Nothing here allocates.

/// Why a datagram is not RTP/RTCP we relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the fixed header.
    TooShort,
    /// The version field is not 2.
    BadVersion,
}

/// What a datagram on a media port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rtp(RtpHeader),
    /// RTCP: the first packet's type (200 SR, 201 RR, ...).
    Rtcp {
        packet_type: u8,
    },
}

/// The fixed RTP header fields the relay uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Classify a datagram received on a media port.
///
/// RFC 5761 §4: with RTP and RTCP on one port, a second byte of 192–223 (payload types
/// 64–95 with the marker bit set) is RTCP; RTP must not use those payload types.
pub fn classify(buf: &[u8]) -> Result<Kind, RtpError> {
    let [b0, b1, ..] = *buf else {
        return Err(RtpError::TooShort);
    };
    if b0 >> 6 != 2 {
        return Err(RtpError::BadVersion);
    }
    if (192..=223).contains(&b1) {
        // RTCP: a common header is 4 bytes, the smallest packet (RR without blocks) 8.
        if buf.len() < 8 {
            return Err(RtpError::TooShort);
        }
        return Ok(Kind::Rtcp { packet_type: b1 });
    }
    let Some(fixed) = buf.first_chunk::<12>() else {
        return Err(RtpError::TooShort);
    };
    Ok(Kind::Rtp(RtpHeader {
        marker: b1 & 0x80 != 0,
        payload_type: b1 & 0x7f,
        sequence: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    }))
}

/// Receive statistics of one RTP stream (one SSRC at a time; a new SSRC restarts them).
///
/// Loss is counted from sequence-number gaps with RFC 3550 A.1's probation-free
/// variant: `expected = extended_max - base + 1`, `lost = expected - received` (may go
/// negative with duplicates, reported as 0). Jitter is RFC 3550 A.8's running estimate
/// in timestamp units, converted to microseconds with the stream's clock rate.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReceiveStats {
    ssrc: Option<u32>,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    /// Previous packet's transit time (arrival in timestamp units − RTP timestamp).
    last_transit: Option<i64>,
    /// Jitter estimate × 16 (A.8 keeps it scaled to avoid fractions).
    jitter_q4: u64,
}

/// A gap larger than this is a restart or reordering, not loss (RFC 3550 A.1 MAX_DROPOUT).
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1 MAX_MISORDER.
const MAX_MISORDER: u16 = 100;

impl ReceiveStats {
    /// Account one RTP packet that arrived `arrival_us` microseconds after some fixed
    /// origin, for a stream with `clock_rate` Hz.
    pub fn on_packet(&mut self, h: &RtpHeader, arrival_us: u64, clock_rate: u32) {
        if self.ssrc != Some(h.ssrc) {
            *self = ReceiveStats {
                ssrc: Some(h.ssrc),
                base_seq: u32::from(h.sequence),
                max_seq: h.sequence,
                ..Default::default()
            };
        } else {
            let delta = h.sequence.wrapping_sub(self.max_seq);
            if delta > 0 && delta < MAX_DROPOUT {
                if h.sequence < self.max_seq {
                    self.cycles += 1;
                }
                self.max_seq = h.sequence;
            } else if delta != 0 && delta <= u16::MAX - MAX_MISORDER {
                // A big jump: the sender restarted its sequence. Start counting afresh.
                self.base_seq = u32::from(h.sequence);
                self.max_seq = h.sequence;
                self.cycles = 0;
                self.received = 0;
            }
            // else: duplicate or reordered within MAX_MISORDER: counted as received.
        }
        self.received += 1;

        // RFC 3550 A.8: D = (Rj - Ri) - (Sj - Si); J += (|D| - J) / 16.
        let rate = u64::from(clock_rate.max(1));
        let arrival_ts = (arrival_us.wrapping_mul(rate) / 1_000_000) as i64;
        let transit = arrival_ts.wrapping_sub(i64::from(h.timestamp));
        if let Some(last) = self.last_transit {
            let d = transit.wrapping_sub(last).unsigned_abs();
            // jitter_q4 += |D| - jitter_q4/16  (A.8's integer form)
            self.jitter_q4 = self.jitter_q4 + d.min(1 << 32) - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the sequence numbers seen.
    pub fn expected(&self) -> u64 {
        if self.ssrc.is_none() {
            return 0;
        }
        let extended_max = u64::from(self.cycles) * 65536 + u64::from(self.max_seq);
        extended_max + 1 - u64::from(self.base_seq)
    }

    /// Packets lost so far (never negative).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter_ts(&self) -> u64 {
        self.jitter_q4 >> 4
    }

    /// Interarrival jitter in microseconds for a stream with `clock_rate` Hz.
    pub fn jitter_us(&self, clock_rate: u32) -> u64 {
        self.jitter_ts() * 1_000_000 / u64::from(clock_rate.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 0; // PCMU
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        p
    }

    fn header(seq: u16, ts: u32) -> RtpHeader {
        match classify(&rtp(seq, ts)).unwrap() {
            Kind::Rtp(h) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn classifies_rtp_and_rtcp_per_rfc5761() {
        let h = header(7, 160);
        assert_eq!(
            (h.sequence, h.timestamp, h.ssrc, h.payload_type),
            (7, 160, 0x1234_5678, 0)
        );
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(classify(&rr), Ok(Kind::Rtcp { packet_type: 201 }));
        assert_eq!(classify(&[0x80, 200, 0]), Err(RtpError::TooShort));
        assert_eq!(classify(&[0x80, 0, 0, 1]), Err(RtpError::TooShort));
        assert_eq!(classify(&[0x40; 12]), Err(RtpError::BadVersion));
        assert_eq!(classify(&[]), Err(RtpError::TooShort));
        // PT 96 with marker is 0xE0 = 224: above the RTCP range, so RTP.
        let mut dyn_pt = rtp(1, 1);
        dyn_pt[1] = 0x80 | 96;
        assert!(matches!(classify(&dyn_pt), Ok(Kind::Rtp(h)) if h.marker && h.payload_type == 96));
    }

    #[test]
    fn counts_loss_from_gaps_across_wraparound() {
        let mut s = ReceiveStats::default();
        let mut t = 0;
        for seq in (65530u16..=65535).chain(0..10) {
            if seq == 2 || seq == 65533 {
                continue; // two lost
            }
            s.on_packet(&header(seq, u32::from(seq) * 160), t, 8000);
            t += 20_000;
        }
        assert_eq!(s.expected(), 16);
        assert_eq!(s.received(), 14);
        assert_eq!(s.lost(), 2);
    }

    #[test]
    fn jitter_is_zero_for_perfect_pacing_and_grows_with_variation() {
        let mut s = ReceiveStats::default();
        for i in 0..100u16 {
            s.on_packet(&header(i, u32::from(i) * 160), u64::from(i) * 20_000, 8000);
        }
        assert_eq!(s.jitter_ts(), 0);
        let mut s = ReceiveStats::default();
        for i in 0..200u16 {
            // Alternate 15 ms and 25 ms spacing: |D| = 5 ms = 40 timestamp units.
            let arrival = u64::from(i) * 20_000 + if i % 2 == 0 { 0 } else { 5_000 };
            s.on_packet(&header(i, u32::from(i) * 160), arrival, 8000);
        }
        let j = s.jitter_ts();
        assert!((35..=40).contains(&j), "jitter {j}");
        assert_eq!(s.jitter_us(8000), j * 125);
    }

    #[test]
    fn new_ssrc_restarts_the_statistics() {
        let mut s = ReceiveStats::default();
        s.on_packet(&header(100, 0), 0, 8000);
        s.on_packet(&header(105, 800), 100_000, 8000);
        assert_eq!(s.lost(), 4);
        let mut other = header(9, 0);
        other.ssrc = 99;
        s.on_packet(&other, 120_000, 8000);
        assert_eq!((s.expected(), s.lost()), (1, 0));
    }
}
