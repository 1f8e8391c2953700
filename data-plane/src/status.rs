//! `sbc-media status`: connect read-only over the Unix socket and print the node's
//! figures, the way an operator reads them.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::client::RpcClient;
use sbc_shared::rpc::msg::{Hello, PROTOCOL_VERSION, PeerRole, Request, Response};

pub async fn fetch(socket: &Path) -> anyhow::Result<String> {
    let stream = sbc_shared::rpc::unix::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {}: is sbc-media running?",
                socket.display()
            )
        })?;
    let (r, w) = stream.into_split();
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        software: sbc_shared::software("sbc-media status"),
        role: PeerRole::Observer,
        owner: OwnerTag("observer".into()),
    };
    let (client, _events) = RpcClient::handshake(r, w, hello, Duration::from_secs(5)).await?;
    let Response::Stats(s) = client.call(Request::Stats).await? else {
        anyhow::bail!("unexpected answer to stats");
    };
    let mut out = String::new();
    let _ = writeln!(out, "node:                {} ({})", s.node_name, s.software);
    let _ = writeln!(out, "rpc protocol:        {}", s.protocol_version);
    let _ = writeln!(out, "uptime:              {}s", s.uptime_ms / 1000);
    let _ = writeln!(out, "control planes:      {}", s.control_connections);
    let _ = writeln!(out, "sessions owned:      {}", s.sessions_owned);
    let _ = writeln!(out, "sessions orphaned:   {}", s.sessions_orphaned);
    let _ = writeln!(
        out,
        "ports in use / free: {} / {}",
        s.ports_in_use, s.ports_free
    );
    let _ = writeln!(out, "created total:       {}", s.sessions_created_total);
    let _ = writeln!(
        out,
        "reaped total:        {} unclaimed, {} inactive",
        s.sessions_reaped_unclaimed_total, s.sessions_reaped_inactive_total
    );
    Ok(out)
}
