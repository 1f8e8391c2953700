//! The control plane's Prometheus metrics (names documented in `docs/operations.md`).

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sbc_shared::metrics::ProcessMetrics;

#[derive(Clone, Debug)]
pub struct ControlMetrics {
    pub registry: Registry,
    pub process: ProcessMetrics,
    pub media_node_up: IntGaugeVec,
    pub media_node_connects: IntCounterVec,
    pub media_sessions: IntGaugeVec,
    pub sessions_adopted: IntCounterVec,
    pub sessions_abandoned: IntCounterVec,
    pub sessions_ended: IntCounterVec,
    pub rpc_calls: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub draining: IntGauge,
    pub work_in_progress: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl ControlMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let process =
            ProcessMetrics::register(&r, "sbc-control").expect("process metrics register once");
        let gv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition"),
            )
        };
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels)
                    .expect("static metric definition"),
            )
        };
        let g = |name: &str, help: &str| {
            reg(
                &r,
                IntGauge::new(name, help).expect("static metric definition"),
            )
        };
        let config_reloads = cv(
            "sbc_config_reloads_total",
            "Configuration reloads, by result",
            &["result"],
        );
        for result in ["ok", "failed"] {
            config_reloads.with_label_values(&[result]);
        }
        Self {
            config_reloads,
            media_node_up: gv(
                "sbc_media_node_up",
                "1 while the RPC connection to a media node is up",
                &["node"],
            ),
            media_node_connects: cv(
                "sbc_media_node_connects_total",
                "RPC connection attempts to media nodes, by result",
                &["node", "result"],
            ),
            media_sessions: gv(
                "sbc_control_media_sessions",
                "Media sessions this control plane owns, per media node",
                &["node"],
            ),
            sessions_adopted: cv(
                "sbc_control_sessions_adopted_total",
                "Media sessions re-adopted after a (re)connect",
                &["node"],
            ),
            sessions_abandoned: cv(
                "sbc_control_sessions_abandoned_total",
                "Media sessions found on a node with our owner tag but not understood; left to be reaped",
                &["node"],
            ),
            sessions_ended: cv(
                "sbc_control_sessions_ended_total",
                "Media sessions the media node ended on its own, by reason",
                &["node", "reason"],
            ),
            rpc_calls: cv(
                "sbc_control_rpc_calls_total",
                "RPC requests sent to media nodes, by method and result",
                &["node", "method", "result"],
            ),
            draining: g(
                "sbc_control_draining",
                "1 while the control plane drains before exiting",
            ),
            work_in_progress: g(
                "sbc_control_work_in_progress",
                "Units of work (requests, calls) running now",
            ),
            process,
            registry: r,
        }
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}
