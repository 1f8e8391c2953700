//! Starting and running a media node: listeners, the reaper timer, metrics, shutdown.

use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sbc_shared::config::MediaConfig;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use super::rpc::{ConnLimits, SharedNode, lock, serve_connection};
use crate::clock;
use crate::node::Node;

/// Run a media node until `shutdown` completes. Binds everything first, so a port or
/// path that is taken fails here with a clear error, before anything is announced.
pub async fn run(cfg: MediaConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let engine = crate::engine::Engine::start(cfg.engine, &cfg.cores, clock::now())
        .context("starting the packet engine")?;
    let node: SharedNode = Arc::new(Mutex::new(Node::new(&cfg, clock::now(), engine)));
    let limits = ConnLimits {
        max_frame_len: cfg.rpc.max_frame_len as usize,
        stall_timeout: cfg.rpc.stall_timeout.0,
        max_connections: cfg.rpc.max_connections as usize,
    };

    let metrics_listener = TcpListener::bind(cfg.metrics.listen)
        .await
        .with_context(|| {
            format!(
                "media.metrics.listen: cannot listen on {}",
                cfg.metrics.listen
            )
        })?;
    let mut tasks = tokio::task::JoinSet::new();
    {
        let node = node.clone();
        let scrape = Arc::new(move || {
            let n = lock(&node);
            n.refresh_gauges(clock::now());
            sbc_shared::metrics::render(&n.metrics.registry)
        });
        tasks.spawn(sbc_shared::http::serve_metrics(metrics_listener, scrape));
    }
    info!(listen = %cfg.metrics.listen, "metrics listener up");

    if let Some(unix) = &cfg.rpc.unix {
        let listener = sbc_shared::rpc::unix::bind(&unix.path, unix.mode.0).with_context(|| {
            format!(
                "media.rpc.unix.path: cannot listen on {}",
                unix.path.display()
            )
        })?;
        info!(path = %unix.path.display(), mode = format!("{:04o}", unix.mode.0), "RPC listening on Unix socket");
        let node = node.clone();
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let (r, w) = stream.into_split();
                        tokio::spawn(serve_connection(
                            node.clone(),
                            r,
                            w,
                            "unix",
                            "unix-peer".into(),
                            limits,
                        ));
                    }
                    Err(e) => {
                        warn!(error = %e, "Unix RPC accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }

    if let Some(quic) = &cfg.rpc.quic {
        let endpoint = sbc_shared::rpc::quic::server_endpoint(quic)
            .with_context(|| format!("media.rpc.quic: cannot listen on {}", quic.listen))?;
        info!(listen = %quic.listen, "RPC listening on QUIC (mutual TLS)");
        let node = node.clone();
        tasks.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let node = node.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match sbc_shared::rpc::quic::accept(incoming).await {
                        Ok(conn) => {
                            let desc = format!("quic:{remote}");
                            serve_connection(node, conn.recv, conn.send, "quic", desc, limits)
                                .await;
                        }
                        Err(e) => {
                            warn!(%remote, error = %e, "QUIC RPC connection refused");
                            lock(&node).count_refused("tls_refused");
                        }
                    }
                });
            }
        });
    }

    // The reaper: wake at the table's deadline, reap, repeat.
    {
        let node = node.clone();
        tasks.spawn(async move {
            loop {
                let deadline = lock(&node).poll_timeout();
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => {
                        tokio::time::sleep(crate::proto::table::SWEEP_INTERVAL).await;
                        continue;
                    }
                }
                lock(&node).handle_timeout(clock::now());
            }
        });
    }

    info!(node = %cfg.node_name, software = %sbc_shared::software("sbc-media"), "media node running");
    tokio::select! {
        () = shutdown => {
            let n = lock(&node).session_count();
            info!(sessions = n, "shutting down: every media session on this node ends now");
        }
        Some(res) = tasks.join_next() => {
            error!(?res, "a media node task ended unexpectedly");
            anyhow::bail!("a media node task ended unexpectedly");
        }
    }
    if let Some(unix) = &cfg.rpc.unix {
        let _ = std::fs::remove_file(&unix.path);
    }
    Ok(())
}
