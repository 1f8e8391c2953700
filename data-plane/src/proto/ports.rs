//! Port-pair allocation for one media interface, sans-IO.
//!
//! A range `LOW-HIGH` (LOW even) holds pairs `(LOW + 2k, LOW + 2k + 1)`: RTP on the even
//! port, RTCP on the odd one. Allocation is uniformly random among the free pairs (the
//! caller passes the randomness), so a stranger cannot predict the next call's ports.
//! Free and allocate are O(1).

use sbc_shared::config::PortRange;

/// One RTP/RTCP port pair, by index into its interface's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PairIndex(pub u32);

#[derive(Debug)]
pub struct PortPool {
    range: PortRange,
    /// Free pair indices, in no particular order.
    free: Vec<u32>,
    /// `slot[i]` = position of pair `i` in `free`, or `u32::MAX` when allocated.
    slot: Vec<u32>,
}

const ALLOCATED: u32 = u32::MAX;

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        let n = range.pairs();
        Self {
            range,
            free: (0..n).collect(),
            slot: (0..n).collect(),
        }
    }

    /// Take a random free pair; `None` when the range is exhausted.
    pub fn allocate(&mut self, random: u64) -> Option<PairIndex> {
        if self.free.is_empty() {
            return None;
        }
        let pos = (random % self.free.len() as u64) as usize;
        let pair = self.free.swap_remove(pos);
        if let Some(&moved) = self.free.get(pos) {
            self.slot[moved as usize] = pos as u32;
        }
        self.slot[pair as usize] = ALLOCATED;
        Some(PairIndex(pair))
    }

    /// Return a pair to the pool. Releasing a pair twice is a bug and is ignored.
    pub fn release(&mut self, pair: PairIndex) {
        let Some(slot) = self.slot.get_mut(pair.0 as usize) else {
            debug_assert!(false, "pair {} is outside the pool", pair.0);
            return;
        };
        if *slot != ALLOCATED {
            debug_assert!(false, "pair {} released twice", pair.0);
            return;
        }
        *slot = self.free.len() as u32;
        self.free.push(pair.0);
    }

    /// The (RTP, RTCP) ports of a pair.
    pub fn ports(&self, pair: PairIndex) -> (u16, u16) {
        let rtp = u32::from(self.range.low) + 2 * pair.0;
        let rtp = u16::try_from(rtp).expect("pair indices come from this range");
        (rtp, rtp + 1)
    }

    pub fn free_pairs(&self) -> usize {
        self.free.len()
    }

    pub fn total_pairs(&self) -> usize {
        self.slot.len()
    }

    pub fn range(&self) -> PortRange {
        self.range
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_pair_once_then_refuses() {
        let mut pool = PortPool::new(PortRange::parse("40000-40009").unwrap());
        assert_eq!(pool.total_pairs(), 5);
        let mut seen = std::collections::HashSet::new();
        for r in [7u64, 3, 99, 0, 12345] {
            let p = pool.allocate(r).unwrap();
            let (rtp, rtcp) = pool.ports(p);
            assert_eq!(rtp % 2, 0);
            assert_eq!(rtcp, rtp + 1);
            assert!((40000..=40009).contains(&rtcp));
            assert!(seen.insert(p));
        }
        assert_eq!(pool.allocate(1), None);
        for p in seen {
            pool.release(p);
        }
        assert_eq!(pool.free_pairs(), 5);
    }

    #[test]
    fn odd_high_end_leaves_no_half_pair() {
        let pool = PortPool::new(PortRange::parse("40000-40004").unwrap());
        // 40000/1, 40002/3; 40004 has no RTCP partner.
        assert_eq!(pool.total_pairs(), 2);
    }

    #[test]
    fn release_then_allocate_keeps_slots_consistent() {
        let mut pool = PortPool::new(PortRange::parse("40000-40099").unwrap());
        let mut held: Vec<PairIndex> = (0..50).map(|i| pool.allocate(i * 7919).unwrap()).collect();
        for p in held.drain(..25) {
            pool.release(p);
        }
        while let Some(p) = pool.allocate(31) {
            held.push(p);
        }
        assert_eq!(held.len(), 50);
        let unique: std::collections::HashSet<_> = held.iter().collect();
        assert_eq!(unique.len(), 50);
    }
}
