//! One measured run: `calls` calls, each sending 50 packets/s in each direction (20 ms
//! apart), every packet at its own slot so that the load is spread evenly across the
//! 20 ms tick. The A side (socket 0) sends direction 0 to each call's first
//! destination; the relay delivers it to the B side (socket 1), and back.
//!
//! Timeline: `warmup` (sent, not counted), then the measured window of `duration`, then
//! sending stops and the receiver drains for `drain`. A packet belongs to the window when
//! its send time (stamped into it just before the send system call) does; loss is the
//! share of the window's packets that never arrived. Latency is receive time (right after
//! `recvmmsg` returns) minus send time: the whole one-way trip through the relay,
//! load generator included. The relay's CPU time is read from `/proc` at the edges of the
//! window and divided by the packets that arrived in between.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use serde::{Deserialize, Serialize};

use crate::hist::Hist;
use crate::mmsg::{BATCH, Batch, wait_readable};
use crate::packet::{self, PACKET_LEN};
use crate::sys;
use crate::target::Destinations;

/// Packets per second per call and direction.
pub const PACKETS_PER_SECOND: u64 = 50;
const TICK_NS: u64 = 1_000_000_000 / PACKETS_PER_SECOND;

#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    pub calls: usize,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    pub drain_ns: u64,
    /// The relay process, for its CPU time (none for `direct`).
    pub relay_pid: Option<i32>,
}

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub calls: usize,
    pub window_s: f64,
    /// Packets the window should hold (both directions): calls × 100 × seconds.
    pub expected: u64,
    /// Packets sent in the window, per direction (0: A→B, 1: B→A).
    pub sent: [u64; 2],
    /// Of those, received, per direction.
    pub received: [u64; 2],
    pub loss_pct: f64,
    /// Share of the expected packets the load generator managed to send on time
    /// (below 99.9 %: the load generator, not the relay, is the limit).
    pub sent_ratio: f64,
    /// One-way latency through the relay, µs (p50, p99, p99.9, max).
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
    /// How late the load generator sent, behind each packet's slot (p99, max), µs.
    pub send_lag_p99_us: f64,
    pub send_lag_max_us: f64,
    /// Relay CPU time per relayed packet, µs (utime + stime; and on-CPU time).
    pub cpu_us_per_pkt: Option<f64>,
    pub cpu_us_per_pkt_sched: Option<f64>,
    /// Relay CPU use over the window, % of one CPU.
    pub relay_cpu_pct: Option<f64>,
    /// Packets that arrived while the relay's CPU time was measured.
    pub relayed_in_cpu_window: u64,
    pub send_failed: u64,
    /// Datagrams the kernel dropped at the load generator's own sockets (its fault).
    pub loadgen_socket_drops: u64,
    /// Host-wide UDP receive-buffer drops during the run (relay + load generator).
    pub host_rcvbuf_drops: u64,
    /// Packets that arrived on the wrong side, or that were not ours.
    pub misrouted: u64,
    pub foreign: u64,
    /// CPU used on the host during the window by anything but the relay and the load
    /// generator, % of one CPU (other people's work disturbs the figures); and CPU time
    /// stolen by the hypervisor, % of one CPU.
    pub other_cpu_pct: Option<f64>,
    pub steal_pct: Option<f64>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Run the traffic; `dest` holds at least `spec.calls` destinations per direction.
pub fn run(sockets: [&UdpSocket; 2], dest: &Destinations, spec: RunSpec) -> RunResult {
    let calls = spec.calls.max(1).min(dest[0].len()).min(dest[1].len());
    let fds = [sockets[0].as_raw_fd(), sockets[1].as_raw_fd()];
    let ports: Vec<u16> = sockets
        .iter()
        .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
        .collect();
    let slots = 2 * calls as u64;
    let t0 = sys::now_ns() + 5_000_000;
    let due = |s: u64| t0 + (s / slots) * TICK_NS + (s % slots) * TICK_NS / slots;
    let w_start = t0 + spec.warmup_ns;
    let w_end = w_start + spec.duration_ns;
    let stop_at = w_end + spec.drain_ns;
    // Slots whose time falls before the end of the window are sent (late ones too).
    let total_slots = {
        let ticks = (w_end - t0).div_ceil(TICK_NS);
        let mut n = ticks * slots;
        while n > 0 && due(n - 1) >= w_end {
            n -= 1;
        }
        n
    };

    let mut out = [Batch::new(PACKET_LEN), Batch::new(PACKET_LEN)];
    let mut inb = Batch::new(256);
    let mut lat = Hist::new();
    let mut lag = Hist::new();
    let mut r = RunResult {
        calls,
        ..RunResult::default()
    };
    let drops0 = sys::udp_socket_drops(&ports);
    let rcvbuf0 = sys::udp_rcvbuf_errors();
    let mut cpu0: Option<(u64, sys::CpuTime)> = None;
    let mut cpu1: Option<(u64, sys::CpuTime)> = None;
    let self_pid = std::process::id() as i32;
    let snapshot = || (sys::host_cpu(), sys::cpu_time(self_pid).unwrap_or_default());
    let mut host0 = None;
    let mut host1 = None;
    let mut cpu_started = false;
    let mut cpu_done = false;
    let mut s = 0u64;

    let flush = |b: &mut Batch, fd: i32, r: &mut RunResult, dir: usize| {
        if b.is_empty() {
            return;
        }
        let now = sys::now_ns();
        b.for_each_mut(|p| packet::stamp(p, now));
        let n = b.len() as u64;
        let (_sent, failed) = b.send(fd);
        if (w_start..w_end).contains(&now) {
            r.sent[dir] += n;
        }
        r.send_failed += failed;
    };

    loop {
        let now = sys::now_ns();
        if now >= stop_at {
            break;
        }
        if !cpu_started && now >= w_start {
            cpu_started = true;
            host0 = Some((sys::now_ns(), snapshot()));
            cpu0 = spec
                .relay_pid
                .and_then(|p| sys::cpu_time(p).ok())
                .map(|c| (sys::now_ns(), c));
        }
        if cpu_started && !cpu_done && now >= w_end {
            cpu_done = true;
            host1 = Some((sys::now_ns(), snapshot()));
            cpu1 = spec
                .relay_pid
                .and_then(|p| sys::cpu_time(p).ok())
                .map(|c| (sys::now_ns(), c));
        }

        // Send what is due (a bounded amount, so receiving keeps up).
        let mut sent_now = 0usize;
        while sent_now < 2 * BATCH && s < total_slots {
            let d = due(s);
            if d > now {
                break;
            }
            let j = s % slots;
            let call = (j / 2) as usize;
            let dir = (j % 2) as usize;
            if out[dir].is_full() {
                flush(&mut out[dir], fds[dir], &mut r, dir);
            }
            let buf = out[dir].push(&dest[dir][call], PACKET_LEN);
            packet::fill(buf, call as u32, dir as u8, s / slots);
            if (w_start..w_end).contains(&d) {
                lag.record(now - d);
            }
            s += 1;
            sent_now += 1;
        }
        for dir in 0..2 {
            flush(&mut out[dir], fds[dir], &mut r, dir);
        }

        // Receive: direction 0 arrives on the B side (socket 1), direction 1 on A.
        let mut got_now = 0usize;
        for (sock, expect_dir) in [(1usize, 0u8), (0, 1)] {
            for _ in 0..4 {
                let n = inb.recv(fds[sock]).unwrap_or_default();
                if n == 0 {
                    break;
                }
                got_now += n;
                let t = sys::now_ns();
                let in_cpu_window = cpu_started && !cpu_done;
                if in_cpu_window {
                    r.relayed_in_cpu_window += n as u64;
                }
                for i in 0..n {
                    let Some(p) = packet::parse(inb.msg(i)) else {
                        r.foreign += 1;
                        continue;
                    };
                    if p.dir != expect_dir {
                        r.misrouted += 1;
                        continue;
                    }
                    if (w_start..w_end).contains(&p.sent_ns) {
                        r.received[p.dir as usize] += 1;
                        lat.record(t.saturating_sub(p.sent_ns));
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }

        if sent_now == 0 && got_now == 0 {
            let next = if s < total_slots { due(s) } else { stop_at };
            let now = sys::now_ns();
            let edge = if !cpu_started {
                w_start
            } else if !cpu_done {
                w_end
            } else {
                stop_at
            };
            let next = next.min(edge);
            if next > now + 30_000 {
                wait_readable(fds, next - now - 10_000);
            }
        }
    }

    r.window_s = spec.duration_ns as f64 / 1e9;
    r.expected = 2 * calls as u64 * PACKETS_PER_SECOND * spec.duration_ns / 1_000_000_000;
    let sent: u64 = r.sent.iter().sum();
    let received: u64 = r.received.iter().sum();
    r.loss_pct = if sent == 0 {
        100.0
    } else {
        100.0 * sent.saturating_sub(received) as f64 / sent as f64
    };
    r.sent_ratio = if r.expected == 0 {
        0.0
    } else {
        sent as f64 / r.expected as f64
    };
    r.lat_p50_us = us(lat.quantile_ns(0.5));
    r.lat_p99_us = us(lat.quantile_ns(0.99));
    r.lat_p999_us = us(lat.quantile_ns(0.999));
    r.lat_max_us = us(lat.max_ns());
    r.send_lag_p99_us = us(lag.quantile_ns(0.99));
    r.send_lag_max_us = us(lag.max_ns());
    if let (Some((ta, a)), Some((tb, b))) = (cpu0, cpu1) {
        let pkts = r.relayed_in_cpu_window.max(1) as f64;
        r.cpu_us_per_pkt = Some(b.stat_us.saturating_sub(a.stat_us) as f64 / pkts);
        r.cpu_us_per_pkt_sched = Some(b.sched_us.saturating_sub(a.sched_us) as f64 / pkts);
        let wall_us = (tb.saturating_sub(ta)) as f64 / 1000.0;
        r.relay_cpu_pct = Some(100.0 * b.sched_us.saturating_sub(a.sched_us) as f64 / wall_us);
    }
    if let (Some((ta, (ha, la))), Some((tb, (hb, lb)))) = (host0, host1) {
        let wall_us = (tb.saturating_sub(ta)) as f64 / 1000.0;
        let relay_us = match (cpu0, cpu1) {
            (Some((_, a)), Some((_, b))) => b.stat_us.saturating_sub(a.stat_us),
            _ => 0,
        };
        let ours = lb.stat_us.saturating_sub(la.stat_us) + relay_us;
        let busy = hb.busy_us.saturating_sub(ha.busy_us);
        r.other_cpu_pct = Some(100.0 * busy.saturating_sub(ours) as f64 / wall_us);
        r.steal_pct = Some(100.0 * hb.steal_us.saturating_sub(ha.steal_us) as f64 / wall_us);
    }
    r.loadgen_socket_drops = sys::udp_socket_drops(&ports).saturating_sub(drops0);
    r.host_rcvbuf_drops = sys::udp_rcvbuf_errors().saturating_sub(rcvbuf0);
    r
}
