//! The RPC client both the control plane and operators' tools use: hello exchange,
//! requests matched to responses by id, events delivered on a channel.
//!
//! One background task reads frames; [`RpcClient::call`] may be used from many tasks at
//! once. When the connection ends, every pending call fails with [`CallError::Closed`]
//! and the event channel closes: that is how the owner learns to reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::codec::{DEFAULT_MAX_FRAME_LEN, FrameError, decode};
use super::msg::{
    ClientFrame, Event, Hello, HelloAck, PROTOCOL_VERSION, Request, Response, RpcError, RpcResult,
    ServerFrame,
};
use super::stream::{FrameReader, FrameWriter, ReadError};

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "media node refused the connection: {reason} (it speaks RPC protocol version {server_version})"
    )]
    Rejected { reason: String, server_version: u16 },
    #[error(
        "RPC protocol version mismatch: media node `{node}` ({software}) speaks version {theirs}, this side speaks version {PROTOCOL_VERSION}; upgrade the older side"
    )]
    VersionMismatch {
        node: String,
        software: String,
        theirs: u16,
    },
    #[error("no answer to hello within {0:?}")]
    Timeout(Duration),
    #[error("connection closed during hello")]
    Closed,
    #[error("unexpected answer to hello: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Transport(String),
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("media node answered: {0}")]
    Rpc(#[from] RpcError),
    #[error("RPC connection closed")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<RpcResult>>>>;
type BoxWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected, hello'd RPC client.
pub struct RpcClient {
    writer: tokio::sync::Mutex<FrameWriter<BoxWriter>>,
    pending: Pending,
    next_id: AtomicU64,
    ack: HelloAck,
    request_timeout: Duration,
    reader_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("ack", &self.ack)
            .finish_non_exhaustive()
    }
}

impl Drop for RpcClient {
    fn drop(&mut self) {
        self.reader_task.abort();
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<RpcResult>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl RpcClient {
    /// Send `hello` on a fresh stream and wait for the server's answer.
    ///
    /// Returns the client and the receiver of the server's events; the receiver yields
    /// `None` once the connection is gone.
    pub async fn handshake<R, W>(
        reader: R,
        writer: W,
        hello: Hello,
        request_timeout: Duration,
    ) -> Result<(RpcClient, mpsc::Receiver<Event>), ConnectError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut reader = FrameReader::new(reader, DEFAULT_MAX_FRAME_LEN, request_timeout);
        let mut writer = FrameWriter::new(Box::new(writer) as BoxWriter);
        writer.write_msg(&ClientFrame::Hello(hello)).await?;
        let frame = match tokio::time::timeout(request_timeout, reader.read_frame()).await {
            Err(_) => return Err(ConnectError::Timeout(request_timeout)),
            Ok(r) => r?.ok_or(ConnectError::Closed)?,
        };
        // Versions first, from the fields every version's hello_ack has: a newer node's
        // ack may not decode into this build's type, and the operator must still be told
        // which versions disagree.
        if let Some(probe) = super::codec::probe_version(&frame) {
            if probe.kind == "hello_ack" && probe.protocol_version != PROTOCOL_VERSION {
                return Err(ConnectError::VersionMismatch {
                    node: probe.node_name,
                    software: probe.software,
                    theirs: probe.protocol_version,
                });
            }
        }
        let ack = match decode::<ServerFrame>(&frame) {
            Ok(ServerFrame::HelloAck(ack)) => ack,
            Ok(ServerFrame::HelloReject(r)) => {
                return Err(ConnectError::Rejected {
                    reason: r.reason,
                    server_version: r.protocol_version,
                });
            }
            Ok(other) => return Err(ConnectError::Unexpected(format!("{other:?}"))),
            Err(FrameError::Malformed(e)) => return Err(ConnectError::Unexpected(e)),
            Err(e) => return Err(ConnectError::Unexpected(e.to_string())),
        };
        if ack.protocol_version != PROTOCOL_VERSION {
            return Err(ConnectError::VersionMismatch {
                node: ack.node_name,
                software: ack.software,
                theirs: ack.protocol_version,
            });
        }
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::channel(4096);
        let reader_task = tokio::spawn(read_loop(reader, pending.clone(), events_tx));
        Ok((
            RpcClient {
                writer: tokio::sync::Mutex::new(writer),
                pending,
                next_id: AtomicU64::new(1),
                ack,
                request_timeout,
                reader_task,
            },
            events_rx,
        ))
    }

    /// What the server said in its hello.
    pub fn server(&self) -> &HelloAck {
        &self.ack
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        !self.reader_task.is_finished()
    }

    /// Send a request and wait for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if self.reader_task.is_finished() {
            lock(&self.pending).remove(&id);
            return Err(CallError::Closed);
        }
        let sent = self
            .writer
            .lock()
            .await
            .write_msg(&ClientFrame::Request { id, request })
            .await;
        if let Err(e) = sent {
            lock(&self.pending).remove(&id);
            return Err(CallError::Io(e));
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(CallError::Timeout(self.request_timeout))
            }
            Ok(Err(_)) => Err(CallError::Closed),
            Ok(Ok(result)) => Result::<Response, RpcError>::from(result).map_err(CallError::Rpc),
        }
    }

    /// Write raw bytes on the connection (tests use it to send broken frames).
    pub async fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.lock().await.write_raw(bytes).await
    }

    /// Close our side; pending calls fail.
    pub async fn close(&self) {
        let _ = self.writer.lock().await.shutdown().await;
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    pending: Pending,
    events: mpsc::Sender<Event>,
) {
    loop {
        let frame = match reader.read_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "RPC connection to media node broken");
                break;
            }
        };
        match decode::<ServerFrame>(&frame) {
            Ok(ServerFrame::Response { id, result }) => {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Ok(ServerFrame::Event { event }) => {
                if events.send(event).await.is_err() {
                    // Nobody listens for events; keep serving responses.
                }
            }
            Ok(other) => tracing::warn!(frame = ?other, "unexpected RPC frame ignored"),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable RPC frame from media node; closing");
                break;
            }
        }
    }
    // Dropping the senders fails every pending call with `Closed`.
    lock(&pending).clear();
}
