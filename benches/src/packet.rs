//! The load generator's RTP packets: a plain 20 ms G.711 µ-law frame, 172 bytes on the
//! wire (12-byte RTP header, 160 bytes of payload).
//!
//! Each call and direction has its own SSRC; sequence number and timestamp advance by
//! one frame (1, 160) per packet. The first bytes of the payload carry what the receiver
//! needs to measure: the send time (`CLOCK_MONOTONIC` ns), a magic word, the call index
//! and the direction. The rest is µ-law silence (0xFF).

/// Bytes of one packet.
pub const PACKET_LEN: usize = 172;
/// RTP header length (no CSRC, no extension).
pub const HEADER_LEN: usize = 12;
/// RTP timestamp units per packet (20 ms at 8 kHz).
pub const SAMPLES_PER_PACKET: u32 = 160;
/// PCMU.
pub const PAYLOAD_TYPE: u8 = 0;

const MAGIC: u32 = 0x5342_4342; // "SBCB"
const TS_OFF: usize = HEADER_LEN;
const MAGIC_OFF: usize = HEADER_LEN + 8;
const CALL_OFF: usize = HEADER_LEN + 12;
const DIR_OFF: usize = HEADER_LEN + 16;
const SILENCE_OFF: usize = HEADER_LEN + 17;

/// Direction 0: A side → relay leg 0 → (out of leg 1) → B side. Direction 1: back.
pub fn ssrc(call: u32, dir: u8) -> u32 {
    0x1000_0000u32
        .wrapping_add(call.wrapping_mul(2))
        .wrapping_add(u32::from(dir))
}

/// Write packet number `n` of (`call`, `dir`) into `buf` (exactly [`PACKET_LEN`] bytes),
/// except the send time: [`stamp`] writes that right before sending.
pub fn fill(buf: &mut [u8], call: u32, dir: u8, n: u64) {
    buf[0] = 0x80; // V=2, no padding, no extension, no CSRC
    buf[1] = PAYLOAD_TYPE | if n == 0 { 0x80 } else { 0 }; // marker on the first
    buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
    let ts = (n as u32).wrapping_mul(SAMPLES_PER_PACKET);
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc(call, dir).to_be_bytes());
    buf[MAGIC_OFF..MAGIC_OFF + 4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[CALL_OFF..CALL_OFF + 4].copy_from_slice(&call.to_le_bytes());
    buf[DIR_OFF] = dir;
    buf[SILENCE_OFF..PACKET_LEN].fill(0xFF);
}

/// Write the send time into a filled packet.
pub fn stamp(buf: &mut [u8], sent_ns: u64) {
    buf[TS_OFF..TS_OFF + 8].copy_from_slice(&sent_ns.to_le_bytes());
}

/// What a received packet says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub call: u32,
    pub dir: u8,
    pub sent_ns: u64,
}

/// Read back a packet this module wrote; `None` for anything else.
pub fn parse(buf: &[u8]) -> Option<Received> {
    if buf.len() != PACKET_LEN || buf[0] != 0x80 {
        return None;
    }
    let word = |off: usize| -> Option<[u8; 4]> { buf.get(off..off + 4)?.try_into().ok() };
    if u32::from_le_bytes(word(MAGIC_OFF)?) != MAGIC {
        return None;
    }
    let call = u32::from_le_bytes(word(CALL_OFF)?);
    let dir = buf[DIR_OFF];
    let sent_ns = u64::from_le_bytes(buf.get(TS_OFF..TS_OFF + 8)?.try_into().ok()?);
    let ssrc_field = u32::from_be_bytes(word(8)?);
    (dir < 2 && ssrc_field == ssrc(call, dir)).then_some(Received { call, dir, sent_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; PACKET_LEN];
        fill(&mut buf, 1234, 1, 77);
        stamp(&mut buf, 987_654_321);
        assert_eq!(
            parse(&buf),
            Some(Received {
                call: 1234,
                dir: 1,
                sent_ns: 987_654_321
            })
        );
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 77);
        assert_eq!(buf[PACKET_LEN - 1], 0xFF);
        assert_eq!(parse(&buf[..100]), None);
    }
}
