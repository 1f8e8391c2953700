//! Serving RPC connections: the hello exchange, then requests in, responses and events
//! out. The same code serves a Unix-socket stream and a QUIC stream.
//!
//! Per connection there are two tasks: this reader (decode, dispatch to the node, queue
//! the answer) and a writer draining a bounded queue. Events are pushed into the same
//! queue by the node, so a connection's frames leave in one order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::codec::{ClientInput, decode_client, is_known_method, probe_version};
use sbc_shared::rpc::msg::{
    ClientFrame, ErrorCode, Hello, HelloAck, HelloReject, PROTOCOL_VERSION, RpcError, ServerFrame,
};
use sbc_shared::rpc::stream::{FrameReader, FrameWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::clock;
use crate::node::{Node, Peer};

/// How long a new connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames queued toward one peer before it counts as not reading.
const OUTBOX: usize = 1024;

/// Limits applied to every connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_frame_len: usize,
    pub stall_timeout: Duration,
    pub max_connections: usize,
}

pub type SharedNode = Arc<Mutex<Node>>;

/// Lock the node. A poisoned lock means a bug panicked while holding it; the state is
/// still the best we have, and media must keep flowing, so carry on.
pub fn lock(node: &SharedNode) -> std::sync::MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn reject(reason: &str) -> ServerFrame {
    ServerFrame::HelloReject(HelloReject {
        protocol_version: PROTOCOL_VERSION,
        reason: reason.to_owned(),
    })
}

/// Serve one connection until it closes. `peer_desc` names it in logs.
pub async fn serve_connection<R, W>(
    node: SharedNode,
    reader: R,
    writer: W,
    transport: &'static str,
    peer_desc: String,
    limits: ConnLimits,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut reader = FrameReader::new(reader, limits.max_frame_len, limits.stall_timeout);
    let mut writer = FrameWriter::new(writer);

    // 1. Hello.
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.read_frame()).await {
        Err(_) => return refuse(&node, &peer_desc, "hello_timeout", "no hello within 10s"),
        Ok(Err(e)) => return refuse(&node, &peer_desc, e.reason(), &e.to_string()),
        Ok(Ok(None)) => {
            return refuse(
                &node,
                &peer_desc,
                "closed_before_hello",
                "closed before hello",
            );
        }
        Ok(Ok(Some(frame))) => frame,
    };
    // Versions first, from the fields every version's hello has, so that a peer whose
    // hello has other fields is still told which versions disagree.
    if let Some(probe) = probe_version(&hello) {
        if probe.kind == "hello" && probe.protocol_version != PROTOCOL_VERSION {
            let reason = mismatch_reason(&probe.software, probe.protocol_version);
            let _ = writer.write_msg(&reject(&reason)).await;
            return refuse(&node, &peer_desc, "version_mismatch", &reason);
        }
    }
    let hello = match decode_client(&hello) {
        Ok(ClientInput::Frame(ClientFrame::Hello(h))) => h,
        Ok(_) | Err(_) => {
            let reason =
                format!("the first frame must be a hello (protocol version {PROTOCOL_VERSION})");
            let _ = writer.write_msg(&reject(&reason)).await;
            return refuse(&node, &peer_desc, "bad_hello", &reason);
        }
    };
    if let Some(reason) = check_hello(&hello) {
        let _ = writer.write_msg(&reject(&reason)).await;
        let label = if hello.protocol_version != PROTOCOL_VERSION {
            "version_mismatch"
        } else {
            "bad_hello"
        };
        return refuse(&node, &peer_desc, label, &reason);
    }
    let too_many = lock(&node).connection_count() >= limits.max_connections;
    if too_many {
        let reason = format!(
            "this media node accepts at most {} RPC connections",
            limits.max_connections
        );
        let _ = writer.write_msg(&reject(&reason)).await;
        return refuse(&node, &peer_desc, "too_many_connections", &reason);
    }

    // 2. Register, acknowledge, start the writer.
    let (tx, mut rx) = mpsc::channel::<ServerFrame>(OUTBOX);
    let (close_tx, mut close_rx) = oneshot::channel();
    let (conn, ack) = {
        let mut n = lock(&node);
        let conn = n.connect(
            clock::now(),
            Peer {
                owner: hello.owner.clone(),
                role: hello.role,
                transport,
                tx: tx.clone(),
                close: Some(close_tx),
            },
        );
        let ack = HelloAck {
            protocol_version: PROTOCOL_VERSION,
            software: sbc_shared::software("sbc-media"),
            node_name: n.node_name().to_owned(),
            orphan_grace_ms: u64::try_from(n.orphan_grace().as_millis()).unwrap_or(u64::MAX),
            interfaces: n.interface_names(),
        };
        (conn, ack)
    };
    info!(peer = %peer_desc, transport, owner = %hello.owner, role = ?hello.role, software = %hello.software, "RPC peer connected");
    let _ = tx.try_send(ServerFrame::HelloAck(ack));
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = writer.write_msg(&frame).await {
                debug!(error = %e, "RPC write failed");
                break;
            }
        }
        let _ = writer.shutdown().await;
    });

    // 3. Requests until close. `read_frame` keeps partial frames in its decoder, so
    // dropping it in `select!` when the close signal wins loses nothing we still need.
    let reason: &'static str = loop {
        let frame = tokio::select! {
            r = reader.read_frame() => r,
            why = &mut close_rx => break why.unwrap_or("superseded"),
        };
        let payload = match frame {
            Ok(Some(p)) => p,
            Ok(None) => break "peer_closed",
            Err(e) => {
                warn!(peer = %peer_desc, error = %e, "closing RPC connection");
                break e.reason();
            }
        };
        let reply = match decode_client(&payload) {
            Ok(ClientInput::Frame(ClientFrame::Request { id, request })) => {
                let result = lock(&node).handle_request(clock::now(), conn, request);
                ServerFrame::Response {
                    id,
                    result: result.into(),
                }
            }
            Ok(ClientInput::BadRequest { id, error }) => {
                let method = serde_json::from_slice::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/request/method")
                            .and_then(|m| m.as_str())
                            .map(str::to_owned)
                    });
                let code = match method {
                    Some(m) if !is_known_method(&m) => ErrorCode::UnknownMethod,
                    _ => ErrorCode::InvalidRequest,
                };
                lock(&node).count_bad_request(code);
                debug!(peer = %peer_desc, %error, "bad RPC request answered with an error");
                ServerFrame::Response {
                    id,
                    result: Err::<_, _>(RpcError::new(code, error)).into(),
                }
            }
            Ok(ClientInput::Frame(ClientFrame::Hello(_))) => {
                warn!(peer = %peer_desc, "second hello on one connection; closing");
                break "bad_hello";
            }
            Err(e) => {
                warn!(peer = %peer_desc, error = %e, "closing RPC connection");
                break e.reason();
            }
        };
        if tx.try_send(reply).is_err() {
            warn!(peer = %peer_desc, "peer does not read its answers; closing");
            break "slow_reader";
        }
    };
    lock(&node).disconnect(clock::now(), conn, reason);
    drop(tx);
    info!(peer = %peer_desc, owner = %hello.owner, reason, "RPC peer disconnected");
    // Let queued frames (e.g. the last answer) go out, but do not wait forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
}

fn check_hello(hello: &Hello) -> Option<String> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Some(mismatch_reason(&hello.software, hello.protocol_version));
    }
    let OwnerTag(owner) = &hello.owner;
    if owner.is_empty() || owner.len() > OwnerTag::MAX_LEN {
        return Some(format!(
            "owner tag must be 1 to {} bytes",
            OwnerTag::MAX_LEN
        ));
    }
    None
}

fn mismatch_reason(software: &str, version: u16) -> String {
    format!(
        "RPC protocol version mismatch: peer `{software}` speaks version {version}, this sbc-media ({}) speaks version {PROTOCOL_VERSION}; upgrade the older side",
        sbc_shared::software("sbc-media"),
    )
}

fn refuse(node: &SharedNode, peer: &str, label: &'static str, reason: &str) {
    warn!(%peer, reason, "RPC connection refused");
    lock(node).count_refused(label);
}
