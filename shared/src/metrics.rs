//! Metric names and label values shared by both processes (one source of truth for
//! `docs/operations.md`), plus the metrics every process exports the same way.
//!
//! Conventions: `sbc_` prefix, `_total` for counters, base units (`_seconds`,
//! `_bytes`), no per-session labels (cardinality stays bounded by config).

use std::time::Duration;

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

/// `sbc_build_info{process, version, rpc_protocol}`: always 1.
pub const BUILD_INFO: &str = "sbc_build_info";
/// `sbc_uptime_seconds`: seconds since the process started.
pub const UPTIME_SECONDS: &str = "sbc_uptime_seconds";

/// Metrics every process has: build info and uptime.
#[derive(Clone, Debug)]
pub struct ProcessMetrics {
    pub uptime_seconds: IntGauge,
}

impl ProcessMetrics {
    /// Register build info and uptime for `process` (`sbc-control` or `sbc-media`).
    pub fn register(registry: &Registry, process: &str) -> prometheus::Result<Self> {
        let build = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Build information; the value is always 1"),
            &["process", "version", "rpc_protocol"],
        )?;
        build
            .with_label_values(&[
                process,
                env!("CARGO_PKG_VERSION"),
                &crate::rpc::PROTOCOL_VERSION.to_string(),
            ])
            .set(1);
        registry.register(Box::new(build))?;
        let uptime_seconds = IntGauge::new(UPTIME_SECONDS, "Seconds since the process started")?;
        registry.register(Box::new(uptime_seconds.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self { uptime_seconds })
    }

    /// Called before each scrape.
    pub fn set_uptime(&self, uptime: Duration) {
        self.uptime_seconds
            .set(i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX));
    }
}

/// Render a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding of gathered metrics does not fail");
    String::from_utf8(buf).expect("the text encoder writes UTF-8")
}
