//! `loadgen`: real-rate RTP load through a media relay, and the search for the most
//! calls it holds below a loss threshold. See `benches/run.sh` and
//! `docs/performance.md`.

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use sbc_bench::report::{self, HalfLoad, SystemResult, Trial};
use sbc_bench::sys;
use sbc_bench::target::{NgTarget, SbcTarget, Sides, Target};
use sbc_bench::traffic::{self, RunResult, RunSpec};

const USAGE: &str = "\
usage:
  loadgen run    TARGET [COMMON] --calls N
  loadgen search TARGET [COMMON] [--start 500] [--step 500] [--max 5000] [--resolution 100]
                 [--loss 0.1] [--max-p99-ms 20] [--max-trials 12] [--half-seconds 10]
                 [--repeat 3]
         a level is held when loss < --loss % and p99 one-way latency < --max-p99-ms
         (an overloaded relay queues before it drops)
  loadgen table  RESULT.json...

TARGET (the relay under test):
  --target sbc --rpc PATH [--interface NAME] [--metrics ADDR]   sbc-media over its RPC socket
  --target rtpengine --ng ADDR                                  rtpengine over ng (offer/answer)
  --target raw --relay-a ADDR --relay-b ADDR                    rawrelay: A sends to relay-a, B to relay-b
  --target direct                                               no relay: A sends straight to B

COMMON:
  --a ADDR (127.0.0.1:7000) --b ADDR (127.0.0.1:7002)   the load generator's two sides
  --pid PID            the relay process, for its CPU time
  --cpu N              pin the load generator to CPU N
  --warmup S (2)  --seconds S (10)  --drain-ms MS (300)
  --quiet-wait S (120) --quiet-pct P (10)   before each run, wait up to S seconds until
                       other processes use less than P % of a CPU
  --engine-requested NAME   recorded in the result (sbc-media's media.engine)
  --json FILE          write the result as JSON";

struct Args {
    flags: HashMap<String, String>,
    positional: Vec<String>,
}

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
        let mut flags = HashMap::new();
        let mut positional = Vec::new();
        let mut it = args.peekable();
        while let Some(a) = it.next() {
            if let Some(key) = a.strip_prefix("--") {
                let value = it.next().ok_or_else(|| anyhow!("--{key} needs a value"))?;
                flags.insert(key.to_owned(), value);
            } else {
                positional.push(a);
            }
        }
        Ok(Args { flags, positional })
    }

    fn get<T: FromStr>(&self, key: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.flags.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow!("--{key} {v}: {e}")),
        }
    }

    fn opt<T: FromStr>(&self, key: &str) -> anyhow::Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.flags
            .get(key)
            .map(|v| v.parse().map_err(|e| anyhow!("--{key} {v}: {e}")))
            .transpose()
    }

    fn need(&self, key: &str) -> anyhow::Result<&str> {
        self.flags
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("--{key} is required"))
    }
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.positional.first().map(String::as_str) {
        Some("run") => run_once(&args),
        Some("search") => search(&args),
        Some("table") => table(&args),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything a run needs: the two sockets, the target, the timings.
struct Bench {
    sockets: [UdpSocket; 2],
    target: Target,
    pid: Option<i32>,
    warmup: Duration,
    seconds: Duration,
    drain: Duration,
    /// Before each run, wait (up to this long) until other processes use less than
    /// `quiet_pct` % of a CPU: other people's builds on the same host skew everything.
    quiet_wait: Duration,
    quiet_pct: f64,
}

impl Bench {
    fn setup(args: &Args) -> anyhow::Result<Bench> {
        if let Some(cpu) = args.opt::<usize>("cpu")? {
            sys::pin_to_cpu(cpu).with_context(|| format!("pinning to CPU {cpu}"))?;
        }
        sys::tight_timer_slack();
        let a = sys::v4(args.get("a", "127.0.0.1:7000".parse::<SocketAddr>()?)?)?;
        let b = sys::v4(args.get("b", "127.0.0.1:7002".parse::<SocketAddr>()?)?)?;
        let buf = 32 << 20;
        let sockets = [
            sys::udp_socket(a.into(), buf).with_context(|| format!("binding {a}"))?,
            sys::udp_socket(b.into(), buf).with_context(|| format!("binding {b}"))?,
        ];
        let sides = Sides { a, b };
        let wait = Duration::from_secs(20);
        let target = match args.need("target")? {
            "sbc" => Target::Sbc(SbcTarget::connect(
                &PathBuf::from(args.need("rpc")?),
                args.opt("interface")?,
                args.opt("metrics")?,
                sides,
                wait,
            )?),
            "rtpengine" => {
                Target::Rtpengine(NgTarget::connect(args.need("ng")?.parse()?, sides, wait)?)
            }
            "raw" => Target::Raw {
                a: sys::v4(args.need("relay-a")?.parse()?)?,
                b: sys::v4(args.need("relay-b")?.parse()?)?,
            },
            "direct" => Target::Direct { sides },
            other => bail!("unknown --target {other}"),
        };
        let secs = |key: &str, default: f64| -> anyhow::Result<Duration> {
            let s: f64 = args.get(key, default)?;
            if !(0.0..=3600.0).contains(&s) {
                bail!("--{key} {s}: expected 0 to 3600 seconds");
            }
            Ok(Duration::from_secs_f64(s))
        };
        Ok(Bench {
            sockets,
            target,
            pid: args.opt("pid")?,
            warmup: secs("warmup", 2.0)?,
            seconds: secs("seconds", 10.0)?,
            drain: Duration::from_millis(args.get("drain-ms", 300)?),
            quiet_wait: secs("quiet-wait", 120.0)?,
            quiet_pct: args.get("quiet-pct", 10.0)?,
        })
    }

    fn run(&mut self, calls: usize, seconds: Duration) -> anyhow::Result<RunResult> {
        self.target.set_calls(calls)?;
        self.wait_quiet();
        let dest = self.target.destinations(calls);
        let spec = RunSpec {
            calls,
            warmup_ns: self.warmup.as_nanos() as u64,
            duration_ns: seconds.as_nanos().max(1) as u64,
            drain_ns: self.drain.as_nanos() as u64,
            relay_pid: self.pid,
        };
        Ok(traffic::run(
            [&self.sockets[0], &self.sockets[1]],
            &dest,
            spec,
        ))
    }
}

impl Bench {
    /// Wait until the host is quiet apart from the relay and us (bounded).
    fn wait_quiet(&self) {
        let mut pids = vec![std::process::id() as i32];
        pids.extend(self.pid);
        let start = sys::now_ns();
        let mut told = 0u64;
        loop {
            let others = sys::others_busy_pct(&pids, Duration::from_millis(500));
            if others < self.quiet_pct {
                return;
            }
            let waited = sys::now_ns().saturating_sub(start);
            if waited >= self.quiet_wait.as_nanos() as u64 {
                eprintln!(
                    "  (other processes still use {others:.0} % of a CPU after {:?}: measuring anyway)",
                    self.quiet_wait
                );
                return;
            }
            if waited >= told {
                eprintln!("  (other processes use {others:.0} % of a CPU: waiting for quiet)");
                told = waited + 10_000_000_000;
            }
        }
    }
}

fn describe(r: &RunResult) -> String {
    format!(
        "loss {:.3} % (sent {}+{}, lost {}+{}), one-way through relay p50 {:.0} µs p99 {:.0} µs max {:.0} µs, relay CPU {} % {} µs/pkt, loadgen lag p99 {:.0} µs, sent {:.2} % of schedule, loadgen drops {}, other CPU {} %, steal {} %",
        r.loss_pct,
        r.sent[0],
        r.sent[1],
        r.sent[0].saturating_sub(r.received[0]),
        r.sent[1].saturating_sub(r.received[1]),
        r.lat_p50_us,
        r.lat_p99_us,
        r.lat_max_us,
        r.relay_cpu_pct.map_or("-".into(), |c| format!("{c:.0}")),
        r.cpu_us_per_pkt.map_or("-".into(), |c| format!("{c:.2}")),
        r.send_lag_p99_us,
        100.0 * r.sent_ratio,
        r.loadgen_socket_drops,
        r.other_cpu_pct.map_or("-".into(), |c| format!("{c:.0}")),
        r.steal_pct.map_or("-".into(), |c| format!("{c:.0}")),
    )
}

fn run_once(args: &Args) -> anyhow::Result<()> {
    let mut bench = Bench::setup(args)?;
    let calls: usize = args.need("calls")?.parse()?;
    eprintln!(
        "loadgen: {} ({}), {calls} calls, {:?} warm-up + {:?}",
        bench.target.system(),
        bench.target.engine(),
        bench.warmup,
        bench.seconds
    );
    let seconds = bench.seconds;
    let r = bench.run(calls, seconds);
    bench.target.close();
    let r = r?;
    println!(
        "{calls} calls, {} packets/s each way: {}",
        calls as u64 * traffic::PACKETS_PER_SECOND,
        describe(&r)
    );
    if let Some(path) = args.flags.get("json") {
        std::fs::write(path, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

/// Other processes' CPU use (% of one CPU) above which a failed trial is repeated.
const OTHER_CPU_LIMIT_PCT: f64 = 10.0;

fn one_trial(
    bench: &mut Bench,
    n: usize,
    seconds: Duration,
    threshold: f64,
    max_p99_us: f64,
) -> Trial {
    let trial = match bench.run(n, seconds) {
        Err(e) => Trial {
            calls: n,
            ok: false,
            why: format!("setup: {e:#}"),
            result: None,
        },
        Ok(r) => {
            let (ok, why) = judge(&r, threshold, max_p99_us);
            Trial {
                calls: n,
                ok,
                why,
                result: Some(r),
            }
        }
    };
    match &trial.result {
        Some(r) => eprintln!(
            "  {n:>6} calls: {} → {}",
            describe(r),
            if trial.ok { "held" } else { &trial.why }
        ),
        None => eprintln!("  {n:>6} calls: {}", trial.why),
    }
    trial
}

/// Whether a run counts as held, and if not, whose fault it is.
///
/// Held: loss below the threshold and the relay keeping up. A relay that cannot keep up
/// first grows its socket queues (the default 208 KiB receive buffer holds seconds of
/// one call's packets), so within a bounded trial an overloaded relay may lose nothing
/// yet; its queueing shows as a p99 one-way latency above `max_p99_us` instead.
fn judge(r: &RunResult, loss_threshold: f64, max_p99_us: f64) -> (bool, String) {
    let lost: u64 = (r.sent[0] + r.sent[1]).saturating_sub(r.received[0] + r.received[1]);
    if r.sent_ratio < 0.999 {
        return (false, "loadgen".into());
    }
    if r.loss_pct >= loss_threshold {
        return if r.loadgen_socket_drops * 2 >= lost {
            (false, "loadgen".into())
        } else {
            (false, "relay loss".into())
        };
    }
    if r.lat_p99_us > max_p99_us {
        return if r.send_lag_p99_us > max_p99_us / 2.0 {
            (false, "loadgen".into())
        } else {
            (false, "relay queueing".into())
        };
    }
    (true, String::new())
}

fn search(args: &Args) -> anyhow::Result<()> {
    let mut bench = Bench::setup(args)?;
    let start: usize = args.get("start", 500)?;
    let step: usize = args.get("step", 500)?;
    let max: usize = args.get("max", 5000)?;
    let resolution: usize = args.get::<usize>("resolution", 100)?.max(1);
    let threshold: f64 = args.get("loss", 0.1)?;
    let max_p99_us = 1000.0 * args.get::<f64>("max-p99-ms", 20.0)?;
    let max_trials: usize = args.get("max-trials", 12)?;
    let half_seconds =
        Duration::from_secs_f64(args.get::<f64>("half-seconds", 10.0)?.clamp(0.1, 3600.0));
    let repeat: usize = args.get::<usize>("repeat", 3)?.clamp(1, 20);
    if start == 0 || step == 0 {
        bail!("--start and --step must be above 0");
    }
    let mut res = SystemResult {
        system: bench.target.system().into(),
        engine_requested: args
            .flags
            .get("engine-requested")
            .cloned()
            .unwrap_or_default(),
        engine_ran: bench.target.engine(),
        loss_threshold_pct: threshold,
        ..SystemResult::default()
    };
    eprintln!(
        "loadgen: searching {} (engine {}), {}..{} calls, {:?} warm-up + {:?} per trial",
        res.system, res.engine_ran, start, max, bench.warmup, bench.seconds
    );
    let seconds = bench.seconds;
    let try_calls = |bench: &mut Bench, res: &mut SystemResult, n: usize| -> bool {
        // A level that fails while something else used the CPUs is tried once more.
        for attempt in 0..2 {
            let trial = one_trial(bench, n, seconds, threshold, max_p99_us);
            let disturbed = trial
                .result
                .as_ref()
                .and_then(|r| r.other_cpu_pct)
                .is_some_and(|c| c > OTHER_CPU_LIMIT_PCT);
            let ok = trial.ok;
            res.trials.push(trial);
            if ok || !disturbed || attempt == 1 {
                return ok;
            }
            eprintln!("  (other processes used the CPUs during that trial: trying again)");
        }
        false
    };

    // Ramp up by `step` until a level fails, then bisect down to `resolution`.
    let mut good = 0usize;
    let mut bad: Option<usize> = None;
    let mut n = start;
    while n <= max && res.trials.len() < max_trials {
        if try_calls(&mut bench, &mut res, n) {
            good = n;
            n += step;
        } else {
            bad = Some(n);
            break;
        }
    }
    if let Some(mut hi) = bad {
        let mut lo = good;
        while hi - lo > resolution && res.trials.len() < max_trials {
            let mid = (lo + (hi - lo) / 2) / resolution * resolution;
            let mid = mid.clamp(lo + 1, hi - 1);
            if try_calls(&mut bench, &mut res, mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        good = lo;
        res.first_failing = Some(hi);
        res.limit = res
            .trials
            .iter()
            .rev()
            .find(|t| t.calls == hi)
            .map(|t| t.why.clone())
            .unwrap_or_default();
    } else {
        res.limit = "search cap".into();
    }
    res.max_calls = good;
    res.cpu_us_per_pkt_at_max = res
        .trials
        .iter()
        .rev()
        .find(|t| t.calls == good && t.ok)
        .and_then(|t| t.result.as_ref()?.cpu_us_per_pkt);

    if good > 0 {
        let half = (good / 2).max(1);
        eprintln!("loadgen: half load, {half} calls, {repeat} × {half_seconds:?}");
        let mut runs = Vec::new();
        for _ in 0..repeat {
            match bench.run(half, half_seconds) {
                Ok(r) => {
                    eprintln!("  {half:>6} calls: {}", describe(&r));
                    runs.push(r);
                }
                Err(e) => eprintln!("  {half:>6} calls: {e:#}"),
            }
        }
        res.half = Some(HalfLoad::from_runs(half, runs));
    }
    bench.target.close();
    eprintln!(
        "loadgen: {} ({}): max {} calls below {} % loss (limited by {})",
        res.system, res.engine_ran, res.max_calls, threshold, res.limit
    );
    if let Some(path) = args.flags.get("json") {
        std::fs::write(path, serde_json::to_string_pretty(&res)?)
            .with_context(|| format!("writing {path}"))?;
    }
    println!("{}", report::table(std::slice::from_ref(&res)));
    Ok(())
}

fn table(args: &Args) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for path in &args.positional[1..] {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let r: SystemResult =
            serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
        results.push(r);
    }
    if results.is_empty() {
        bail!("no result files given");
    }
    print!("{}", report::table(&results));
    Ok(())
}
