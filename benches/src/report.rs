//! Results of one system's search (written as JSON by `loadgen search`) and the summary
//! table `loadgen table` prints from several of them.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::traffic::RunResult;

/// One load level tried during the search.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trial {
    pub calls: usize,
    pub ok: bool,
    /// Why it failed (empty when it passed).
    pub why: String,
    pub result: Option<RunResult>,
}

/// The repeated runs at half the maximum, and their medians.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HalfLoad {
    pub calls: usize,
    pub runs: Vec<RunResult>,
    pub loss_pct: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_pkt: Option<f64>,
    pub cpu_us_per_pkt_sched: Option<f64>,
    pub relay_cpu_pct: Option<f64>,
}

impl HalfLoad {
    pub fn from_runs(calls: usize, runs: Vec<RunResult>) -> HalfLoad {
        let med = |f: &dyn Fn(&RunResult) -> Option<f64>| median(runs.iter().filter_map(f));
        HalfLoad {
            calls,
            loss_pct: med(&|r| Some(r.loss_pct)).unwrap_or(100.0),
            p50_us: med(&|r| Some(r.lat_p50_us)).unwrap_or(0.0),
            p99_us: med(&|r| Some(r.lat_p99_us)).unwrap_or(0.0),
            cpu_us_per_pkt: med(&|r| r.cpu_us_per_pkt),
            cpu_us_per_pkt_sched: med(&|r| r.cpu_us_per_pkt_sched),
            relay_cpu_pct: med(&|r| r.relay_cpu_pct),
            runs,
        }
    }
}

pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// What `loadgen search` found for one system.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SystemResult {
    pub system: String,
    pub engine_requested: String,
    pub engine_ran: String,
    pub loss_threshold_pct: f64,
    /// Most calls held below the loss threshold (0: none).
    pub max_calls: usize,
    /// Fewest calls that failed, if any did.
    pub first_failing: Option<usize>,
    /// What stopped the search at `max_calls`: `relay loss`, `loadgen`, `setup: …`,
    /// `search cap`.
    pub limit: String,
    pub cpu_us_per_pkt_at_max: Option<f64>,
    pub trials: Vec<Trial>,
    pub half: Option<HalfLoad>,
}

impl SystemResult {
    /// `max_calls` is only a lower bound (the load generator or the search range ran out
    /// first).
    pub fn is_lower_bound(&self) -> bool {
        self.limit == "loadgen" || self.limit == "search cap"
    }

    fn calls_text(&self) -> String {
        if self.is_lower_bound() {
            format!("≥ {}", self.max_calls)
        } else {
            self.max_calls.to_string()
        }
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn ratio(a: &SystemResult, b: Option<&SystemResult>) -> Option<f64> {
    let b = b?;
    (b.max_calls > 0).then(|| a.max_calls as f64 / b.max_calls as f64)
}

/// The summary table (Markdown), then how the sbc-media rows compare with the targets.
pub fn table(results: &[SystemResult]) -> String {
    let rtpengine = results.iter().find(|r| r.system == "rtpengine");
    let raw = results.iter().find(|r| r.system == "rawrelay");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| system | engine (asked → ran) | max calls, <{}% loss | limited by | relay CPU µs/pkt @max | relay CPU µs/pkt @½ | p50 µs @½ | p99 µs @½ | calls ÷ rtpengine | calls ÷ raw ceiling |",
        results.first().map_or(0.1, |r| r.loss_threshold_pct)
    );
    let _ = writeln!(s, "|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let engine = if r.engine_requested.is_empty() || r.engine_requested == r.engine_ran {
            r.engine_ran.clone()
        } else {
            format!("{} → {}", r.engine_requested, r.engine_ran)
        };
        let half = r.half.as_ref();
        let (vs_rtp, vs_raw) = if r.system == "sbc-media" {
            (ratio(r, rtpengine), ratio(r, raw))
        } else {
            (None, None)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            engine,
            r.calls_text(),
            r.limit,
            opt(r.cpu_us_per_pkt_at_max, 2),
            opt(half.and_then(|h| h.cpu_us_per_pkt), 2),
            opt(half.map(|h| h.p50_us), 0),
            opt(half.map(|h| h.p99_us), 0),
            opt(vs_rtp, 2),
            opt(vs_raw, 2),
        );
    }
    let _ = writeln!(s);
    for r in results.iter().filter(|r| r.system == "sbc-media") {
        let yes = |b: bool| if b { "reached" } else { "NOT reached" };
        let _ = writeln!(
            s,
            "sbc-media ({} → {}): ≥ 2600 calls/core: {} ({}); ≥ 3× rtpengine: {} ({}×); within 10 % of raw: {} ({}×); p99 < 500 µs @½: {} ({} µs)",
            r.engine_requested,
            r.engine_ran,
            yes(r.max_calls >= 2600),
            r.calls_text(),
            yes(ratio(r, rtpengine).is_some_and(|x| x >= 3.0)),
            opt(ratio(r, rtpengine), 2),
            yes(ratio(r, raw).is_some_and(|x| x >= 0.9)),
            opt(ratio(r, raw), 2),
            yes(r.half.as_ref().is_some_and(|h| h.p99_us < 500.0)),
            opt(r.half.as_ref().map(|h| h.p99_us), 0),
        );
    }
    s
}
