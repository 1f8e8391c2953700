//! Starting and running the control plane; signals: SIGHUP reloads, SIGTERM/SIGINT drain
//! and exit. Exiting never touches media sessions: they keep flowing on the media
//! nodes and are re-adopted by the next start.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sbc_shared::config::ControlConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::app::Control;
use crate::clock;

pub async fn run(config_path: PathBuf, cfg: ControlConfig) -> anyhow::Result<()> {
    // Bind everything first: a taken port or path fails here, clearly.
    let metrics_listener = TcpListener::bind(cfg.metrics.listen)
        .await
        .with_context(|| {
            format!(
                "control.metrics.listen: cannot listen on {}",
                cfg.metrics.listen
            )
        })?;
    let admin_listener = sbc_shared::rpc::unix::bind(&cfg.admin_socket, cfg.admin_socket_mode.0)
        .with_context(|| {
            format!(
                "control.admin_socket: cannot listen on {}",
                cfg.admin_socket.display()
            )
        })?;
    let mut hup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;

    let control = Control::start(config_path, cfg.clone(), clock::now());
    let scrape = {
        let control = control.clone();
        Arc::new(move || {
            control.refresh_gauges();
            sbc_shared::metrics::render(&control.metrics.registry)
        })
    };
    let metrics_task = tokio::spawn(sbc_shared::http::serve_metrics(metrics_listener, scrape));
    let admin_task = tokio::spawn(crate::driver::admin::serve(admin_listener, control.clone()));
    info!(
        node_id = %cfg.node_id,
        software = %sbc_shared::software("sbc-control"),
        metrics = %cfg.metrics.listen,
        admin = %cfg.admin_socket.display(),
        "control plane running"
    );

    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading configuration");
                let _ = control.reload();
            }
            _ = term.recv() => { info!("SIGTERM: draining"); break; }
            _ = int.recv() => { info!("SIGINT: draining"); break; }
        }
    }

    control.set_draining();
    let drain = control.config().drain_timeout.0;
    let running = control.work.running();
    if running > 0 {
        info!(
            running,
            drain_s = drain.as_secs(),
            "waiting for running work to finish"
        );
    }
    if tokio::time::timeout(drain, control.work.idle())
        .await
        .is_err()
    {
        warn!(
            still_running = control.work.running(),
            "drain time over; exiting anyway"
        );
    }
    admin_task.abort();
    metrics_task.abort();
    let _ = std::fs::remove_file(&cfg.admin_socket);
    info!(
        sessions = control.book.len(),
        "control plane stopped; media sessions keep running and are re-adopted at the next start"
    );
    Ok(())
}
