//! The control plane's side of the media RPC: one [`MediaLink`] per configured media
//! node, each kept connected by its own task.
//!
//! On every (re)connect the link lists the sessions that carry our owner tag, reads back
//! the `owner_data` we stored with each, adopts the ones it understands and refills the
//! [`SessionBook`]. Sessions it does not understand are left alone; the media node reaps
//! them after its grace period. Version mismatches and refusals are logged as errors
//! with the media node's own words, and retried at the slowest backoff (the operator may
//! be mid-upgrade).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sbc_shared::config::{MediaNodeConfig, RpcClientConfig};
use sbc_shared::ids::{OwnerTag, SessionId};
use sbc_shared::rpc::client::{CallError, ConnectError, RpcClient};
use sbc_shared::rpc::msg::{
    Event, Hello, MAX_LIST_PAGE, PROTOCOL_VERSION, PeerRole, Request, Response,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::book::{Entry, OwnerData, SessionBook};
use crate::metrics::ControlMetrics;

/// Shortest wait between reconnect attempts; doubles up to the configured maximum.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// A media node as the control plane sees it.
#[derive(Debug)]
pub struct MediaLink {
    pub name: String,
    client: Mutex<Option<Arc<RpcClient>>>,
    metrics: ControlMetrics,
    /// Set when a connect attempt fails; shown by `sbcctl status`.
    last_error: Mutex<Option<String>>,
    /// Node software and name from the last hello.
    server: Mutex<Option<String>>,
}

impl MediaLink {
    fn client(&self) -> Option<Arc<RpcClient>> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_connected(&self) -> bool {
        self.client().is_some_and(|c| c.is_open())
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's media interfaces, from its last hello.
    pub fn interfaces(&self) -> Vec<String> {
        self.client()
            .map(|c| c.server().interfaces.clone())
            .unwrap_or_default()
    }

    pub fn server(&self) -> Option<String> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Send a request to this node; fails at once while it is disconnected.
    pub async fn call(&self, request: Request) -> Result<Response, CallError> {
        let method = request.method();
        let Some(client) = self.client() else {
            self.metrics
                .rpc_calls
                .with_label_values(&[&self.name, method, "not_connected"])
                .inc();
            return Err(CallError::Closed);
        };
        let result = client.call(request).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(CallError::Rpc(e)) => e.code.as_str(),
            Err(CallError::Closed) => "closed",
            Err(CallError::Timeout(_)) => "timeout",
            Err(CallError::Io(_)) => "io_error",
        };
        self.metrics
            .rpc_calls
            .with_label_values(&[&self.name, method, label])
            .inc();
        result
    }
}

/// Start a link and its connection task.
pub fn start(
    node: MediaNodeConfig,
    owner: OwnerTag,
    rpc: RpcClientConfig,
    book: Arc<SessionBook>,
    metrics: ControlMetrics,
) -> (Arc<MediaLink>, tokio::task::JoinHandle<()>) {
    // Publish every series of this node at zero so dashboards and alerts see them at once.
    metrics
        .media_node_up
        .with_label_values(&[&node.name])
        .set(0);
    metrics
        .media_sessions
        .with_label_values(&[&node.name])
        .set(0);
    for result in ["ok", "failed", "version_mismatch", "rejected"] {
        metrics
            .media_node_connects
            .with_label_values(&[&node.name, result]);
    }
    metrics.sessions_adopted.with_label_values(&[&node.name]);
    metrics.sessions_abandoned.with_label_values(&[&node.name]);
    for reason in ["inactive", "unclaimed"] {
        metrics
            .sessions_ended
            .with_label_values(&[&node.name, reason]);
    }
    let link = Arc::new(MediaLink {
        name: node.name.clone(),
        client: Mutex::new(None),
        metrics,
        last_error: Mutex::new(None),
        server: Mutex::new(None),
    });
    let task = tokio::spawn(run_link(link.clone(), node, owner, rpc, book));
    (link, task)
}

async fn connect(
    node: &MediaNodeConfig,
    hello: Hello,
    rpc: &RpcClientConfig,
    quic_endpoint: &mut Option<quinn::Endpoint>,
) -> Result<(RpcClient, mpsc::Receiver<Event>), ConnectError> {
    let timeout = rpc.request_timeout.0;
    if let Some(path) = &node.unix {
        let stream = sbc_shared::rpc::unix::connect(path)
            .await
            .map_err(|e| ConnectError::Transport(format!("{}: {e}", path.display())))?;
        let (r, w) = stream.into_split();
        return RpcClient::handshake(r, w, hello, timeout).await;
    }
    let Some(quic) = &node.quic else {
        return Err(ConnectError::Transport(
            "media node has neither `unix` nor `quic` (config validation should have refused this)"
                .into(),
        ));
    };
    if quic_endpoint.is_none() {
        *quic_endpoint = Some(
            sbc_shared::rpc::quic::client_endpoint(quic)
                .map_err(|e| ConnectError::Transport(e.to_string()))?,
        );
    }
    let endpoint = quic_endpoint.as_ref().expect("set just above");
    let stream = sbc_shared::rpc::quic::connect(endpoint, quic)
        .await
        .map_err(|e| ConnectError::Transport(e.to_string()))?;
    // The hello is the first write, which is what makes the stream visible to the node.
    // A node that refuses our certificate says so only in the connection's close reason
    // (TLS 1.3 finishes the client side first), so report that instead of "closed".
    let connection = stream.connection.clone();
    match RpcClient::handshake(stream.recv, stream.send, hello, timeout).await {
        Ok(ok) => Ok(ok),
        Err(e) => match connection.close_reason() {
            Some(reason) => Err(ConnectError::Transport(format!(
                "{} refused the QUIC connection: {reason}",
                quic.address
            ))),
            None => Err(e),
        },
    }
}

async fn run_link(
    link: Arc<MediaLink>,
    node: MediaNodeConfig,
    owner: OwnerTag,
    rpc: RpcClientConfig,
    book: Arc<SessionBook>,
) {
    let metrics = link.metrics.clone();
    let mut backoff = MIN_BACKOFF;
    let mut quic_endpoint = None;
    let mut failures_logged = 0u32;
    loop {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            software: sbc_shared::software("sbc-control"),
            role: PeerRole::Control,
            owner: owner.clone(),
        };
        match connect(&node, hello, &rpc, &mut quic_endpoint).await {
            Ok((client, mut events)) => {
                metrics
                    .media_node_connects
                    .with_label_values(&[&node.name, "ok"])
                    .inc();
                let server = client.server().clone();
                info!(node = %node.name, media = %server.software, node_name = %server.node_name, "connected to media node");
                *link.server.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{} ({})", server.node_name, server.software));
                *link.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let client = Arc::new(client);
                *link.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
                metrics
                    .media_node_up
                    .with_label_values(&[&node.name])
                    .set(1);
                backoff = MIN_BACKOFF;
                failures_logged = 0;

                if let Err(e) = readopt(&link, &owner, &book).await {
                    warn!(node = %node.name, error = %e, "re-adopting sessions failed; will retry on the next connect");
                }
                metrics
                    .media_sessions
                    .with_label_values(&[&node.name])
                    .set(book.count_on(&node.name) as i64);

                while let Some(event) = events.recv().await {
                    handle_event(&link, &book, event);
                }
                *link.client.lock().unwrap_or_else(|e| e.into_inner()) = None;
                metrics
                    .media_node_up
                    .with_label_values(&[&node.name])
                    .set(0);
                warn!(node = %node.name, "RPC connection to media node lost; media keeps flowing there, reconnecting");
            }
            Err(e) => {
                let (label, fatal_looking) = match &e {
                    ConnectError::VersionMismatch { .. } => ("version_mismatch", true),
                    ConnectError::Rejected { .. } => ("rejected", true),
                    _ => ("failed", false),
                };
                metrics
                    .media_node_connects
                    .with_label_values(&[&node.name, label])
                    .inc();
                let text = e.to_string();
                if fatal_looking {
                    error!(node = %node.name, error = %text, "media node refused this control plane");
                    backoff = rpc.reconnect_max_backoff.0;
                } else if failures_logged < 3 || failures_logged % 60 == 0 {
                    warn!(node = %node.name, error = %text, "cannot reach media node; retrying");
                }
                failures_logged += 1;
                *link.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(rpc.reconnect_max_backoff.0);
    }
}

fn handle_event(link: &MediaLink, book: &SessionBook, event: Event) {
    match event {
        Event::SessionEnded {
            session, reason, ..
        } => {
            book.remove(session);
            link.metrics
                .sessions_ended
                .with_label_values(&[&link.name, reason.as_str()])
                .inc();
            link.metrics
                .media_sessions
                .with_label_values(&[&link.name])
                .set(book.count_on(&link.name) as i64);
            info!(node = %link.name, %session, reason = reason.as_str(), "media node ended a session");
        }
        other => tracing::debug!(node = %link.name, event = ?other, "media event"),
    }
}

/// List our sessions on the node, adopt the ones whose blob we understand.
async fn readopt(link: &MediaLink, owner: &OwnerTag, book: &SessionBook) -> Result<(), CallError> {
    let mut after = None;
    let mut found = Vec::new();
    loop {
        let page = link
            .call(Request::ListSessions {
                owner: Some(owner.clone()),
                after,
                limit: MAX_LIST_PAGE,
            })
            .await?;
        let Response::Sessions { sessions, next } = page else {
            return Err(CallError::Closed);
        };
        found.extend(sessions);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let mut understood: Vec<(SessionId, OwnerData)> = Vec::new();
    let mut abandoned = 0u64;
    for s in found {
        match OwnerData::decode(&s.owner_data) {
            Some(data) => understood.push((s.id, data)),
            None => {
                abandoned += 1;
                warn!(node = %link.name, session = %s.id, "session carries our owner tag but data we cannot read; leaving it to be reaped");
            }
        }
    }
    let mut adopted_total = 0u64;
    for chunk in understood.chunks(MAX_LIST_PAGE as usize) {
        let ids: Vec<SessionId> = chunk.iter().map(|(id, _)| *id).collect();
        let Response::Adopted { adopted, refused } =
            link.call(Request::AdoptSessions { sessions: ids }).await?
        else {
            return Err(CallError::Closed);
        };
        for (id, data) in chunk {
            if adopted.contains(id) {
                book.insert(
                    *id,
                    Entry {
                        node: link.name.clone(),
                        data: data.clone(),
                    },
                );
            }
        }
        adopted_total += adopted.len() as u64;
        abandoned += refused.len() as u64;
    }
    link.metrics
        .sessions_adopted
        .with_label_values(&[&link.name])
        .inc_by(adopted_total);
    link.metrics
        .sessions_abandoned
        .with_label_values(&[&link.name])
        .inc_by(abandoned);
    info!(node = %link.name, adopted = adopted_total, abandoned, "re-adopted media sessions");
    Ok(())
}
