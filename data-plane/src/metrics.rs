//! The media node's Prometheus metrics (names documented in `docs/operations.md`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sbc_shared::metrics::ProcessMetrics;

#[derive(Clone, Debug)]
pub struct MediaMetrics {
    pub registry: Registry,
    pub process: ProcessMetrics,
    pub sessions: IntGaugeVec,
    pub sessions_created: IntCounter,
    pub sessions_deleted: IntCounter,
    pub sessions_adopted: IntCounter,
    pub sessions_reaped: IntCounterVec,
    pub ports_in_use: IntGaugeVec,
    pub ports_free: IntGaugeVec,
    pub port_failures: IntCounterVec,
    pub rpc_connections: IntGaugeVec,
    pub rpc_closed: IntCounterVec,
    pub rpc_requests: IntCounterVec,
    pub control_connected: IntGauge,
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub dropped: IntCounterVec,
    pub send_errors: IntCounter,
    pub core_packets: IntCounterVec,
    pub core_sessions: IntGaugeVec,
    pub engine_info: IntGaugeVec,
    /// Last values read from the cores' counters (metrics advance by the difference).
    last: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl MediaMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let process =
            ProcessMetrics::register(&r, "sbc-media").expect("process metrics register once");
        let control_connected = IntGauge::new(
            "sbc_media_control_connections",
            "Control planes connected to this media node",
        )
        .expect("static metric definition");
        r.register(Box::new(control_connected.clone()))
            .expect("metric registered once");
        Self {
            sessions: gauge_vec(
                &r,
                "sbc_media_sessions",
                "Media sessions by ownership state",
                &["state"],
            ),
            sessions_created: counter(
                &r,
                "sbc_media_sessions_created_total",
                "Media sessions created",
            ),
            sessions_deleted: counter(
                &r,
                "sbc_media_sessions_deleted_total",
                "Media sessions deleted by their owner",
            ),
            sessions_adopted: counter(
                &r,
                "sbc_media_sessions_adopted_total",
                "Orphaned sessions adopted by a reconnected control plane",
            ),
            sessions_reaped: counter_vec(
                &r,
                "sbc_media_sessions_reaped_total",
                "Sessions ended by the media node itself, by reason",
                &["reason"],
            ),
            ports_in_use: gauge_vec(
                &r,
                "sbc_media_ports_in_use",
                "UDP ports held by sessions, per media interface",
                &["interface"],
            ),
            ports_free: gauge_vec(
                &r,
                "sbc_media_ports_free",
                "UDP ports available for new legs, per media interface",
                &["interface"],
            ),
            port_failures: counter_vec(
                &r,
                "sbc_media_port_allocation_failures_total",
                "Leg port allocations that failed, by interface and reason",
                &["interface", "reason"],
            ),
            rpc_connections: gauge_vec(
                &r,
                "sbc_rpc_connections",
                "Open RPC connections by role and transport",
                &["role", "transport"],
            ),
            rpc_closed: counter_vec(
                &r,
                "sbc_rpc_connections_closed_total",
                "RPC connections closed, by reason",
                &["reason"],
            ),
            rpc_requests: counter_vec(
                &r,
                "sbc_rpc_requests_total",
                "RPC requests handled, by method and result",
                &["method", "result"],
            ),
            control_connected,
            packets: counter_vec(
                &r,
                "sbc_media_packets_total",
                "Datagrams received on (in) and sent from (out) media ports",
                &["direction"],
            ),
            bytes: counter_vec(
                &r,
                "sbc_media_bytes_total",
                "Bytes received on (in) and sent from (out) media ports",
                &["direction"],
            ),
            dropped: counter_vec(
                &r,
                "sbc_media_packets_dropped_total",
                "Datagrams not forwarded, by reason",
                &["reason"],
            ),
            send_errors: counter(
                &r,
                "sbc_media_send_errors_total",
                "Forwarded datagrams the kernel refused to send",
            ),
            core_packets: counter_vec(
                &r,
                "sbc_media_core_packets_total",
                "Datagrams received per packet worker core (rate() for per-core packet rates)",
                &["core"],
            ),
            core_sessions: gauge_vec(
                &r,
                "sbc_media_core_sessions",
                "Sessions relayed by each packet worker core",
                &["core"],
            ),
            engine_info: gauge_vec(
                &r,
                "sbc_media_engine_info",
                "The packet engine running (value 1)",
                &["engine"],
            ),
            last: Default::default(),
            process,
            registry: r,
        }
    }
}

impl MediaMetrics {
    /// Advance `counter` to the core-side total `now` (cores count; metrics follow).
    pub fn advance(&self, key: &str, counter: &IntCounter, now: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.entry(key.to_owned()).or_insert(0);
        if now > *prev {
            counter.inc_by(now - *prev);
            *prev = now;
        }
    }
}

impl Default for MediaMetrics {
    fn default() -> Self {
        Self::new()
    }
}
