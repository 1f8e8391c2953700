//! A latency histogram: 100 ns buckets up to 20 ms, 1 ms buckets up to 10 s, one bucket
//! above. Recording is an index computation and an increment.

const FINE_NS: u64 = 100;
const FINE_MAX_NS: u64 = 20_000_000;
const COARSE_NS: u64 = 1_000_000;
const COARSE_MAX_NS: u64 = 10_000_000_000;
const FINE_BUCKETS: usize = (FINE_MAX_NS / FINE_NS) as usize;
const COARSE_BUCKETS: usize = ((COARSE_MAX_NS - FINE_MAX_NS) / COARSE_NS) as usize;

#[derive(Clone, Debug)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
    max_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        Hist {
            counts: vec![0; FINE_BUCKETS + COARSE_BUCKETS + 1],
            total: 0,
            max_ns: 0,
        }
    }

    fn index(ns: u64) -> usize {
        if ns < FINE_MAX_NS {
            (ns / FINE_NS) as usize
        } else if ns < COARSE_MAX_NS {
            FINE_BUCKETS + ((ns - FINE_MAX_NS) / COARSE_NS) as usize
        } else {
            FINE_BUCKETS + COARSE_BUCKETS
        }
    }

    /// The upper edge of bucket `i` (what a percentile reports).
    fn upper(i: usize) -> u64 {
        if i < FINE_BUCKETS {
            (i as u64 + 1) * FINE_NS
        } else if i < FINE_BUCKETS + COARSE_BUCKETS {
            FINE_MAX_NS + ((i - FINE_BUCKETS) as u64 + 1) * COARSE_NS
        } else {
            u64::MAX
        }
    }

    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The value below which `q` (0..=1) of the samples lie, in ns; 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max_ns);
            }
        }
        self.max_ns
    }

    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_ns = self.max_ns.max(other.max_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = Hist::new();
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        assert_eq!(h.quantile_ns(0.5), 500_100);
        assert_eq!(h.quantile_ns(0.99), 990_100);
        assert_eq!(h.quantile_ns(1.0), 1_000_000);
        h.record(50_000_000);
        assert_eq!(h.max_ns(), 50_000_000);
    }
}
