//! The control ↔ media RPC messages (documented for humans in `docs/rpc.md`).
//!
//! Every frame carries one JSON object. The client (a control plane, or an observer such
//! as `sbc-media status`) speaks first with [`Hello`]; the server (`sbc-media`) answers
//! [`ServerFrame::HelloAck`] or [`ServerFrame::HelloReject`] and closes. After that the
//! client sends [`ClientFrame::Request`]s, each with an id the server echoes in its
//! [`ServerFrame::Response`]; the server pushes [`ServerFrame::Event`]s at any time.
//!
//! Compatibility rule: the `hello` frame's shape never changes, so any two versions can
//! at least tell each other that they disagree. Within one protocol version, fields are
//! only ever added with a default; a request whose method the server does not know gets
//! an `unknown_method` error response and the connection stays up.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{LegId, OwnerTag, SessionId};

/// The protocol version this build speaks. Both ends require an exact match.
pub const PROTOCOL_VERSION: u16 = 1;

/// Longest `owner_data` blob the data plane stores for a session.
pub const MAX_OWNER_DATA_LEN: usize = 64 * 1024;

/// Most sessions returned by one `list_sessions` page.
pub const MAX_LIST_PAGE: u32 = 1000;

/// The first frame a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    /// Free text for logs, e.g. `sbc-control 0.1.0`.
    pub software: String,
    pub role: PeerRole,
    /// The control plane's `node_id`; sessions it creates carry this tag.
    pub owner: OwnerTag,
}

/// What a connected client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    /// Creates, adopts and deletes sessions; receives their events. At most one live
    /// connection per owner tag: a newer one supersedes the older.
    Control,
    /// Reads only (`get_session`, `list_sessions`, `stats`, `ping`): for operators' tools.
    Observer,
}

/// Frames from client to server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Hello),
    Request { id: u64, request: Request },
}

/// Frames from server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    HelloAck(HelloAck),
    HelloReject(HelloReject),
    Response { id: u64, result: RpcResult },
    Event { event: Event },
}

/// The server accepted the hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub protocol_version: u16,
    pub software: String,
    /// The media node's `node_name` from its config.
    pub node_name: String,
    /// How long sessions of a vanished owner are kept before they are reaped.
    pub orphan_grace_ms: u64,
    /// The node's media interface names, in config order (legs name one of these).
    #[serde(default)]
    pub interfaces: Vec<String>,
}

/// The server refused the hello and will close the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReject {
    /// The version the server speaks.
    pub protocol_version: u16,
    /// A sentence for the operator, e.g. why the versions do not match.
    pub reason: String,
}

/// Requests a client may send after the hello.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Allocate ports for every leg and start relaying. Answered with [`Response::Session`].
    CreateSession(SessionSpec),
    /// Change remote addresses or the owner blob. Answered with [`Response::Session`].
    UpdateSession {
        session: SessionId,
        update: SessionUpdate,
    },
    /// End a session and free its ports. Answered with [`Response::Deleted`].
    DeleteSession { session: SessionId },
    /// Answered with [`Response::Session`].
    GetSession { session: SessionId },
    /// One page of sessions ordered by id, optionally only one owner's.
    /// Answered with [`Response::Sessions`].
    ListSessions {
        #[serde(default)]
        owner: Option<OwnerTag>,
        /// Start after this id (the previous page's `next`).
        #[serde(default)]
        after: Option<SessionId>,
        /// Page size, at most [`MAX_LIST_PAGE`].
        #[serde(default = "default_page")]
        limit: u32,
    },
    /// Take ownership of sessions carrying this connection's owner tag (after a restart).
    /// Answered with [`Response::Adopted`].
    AdoptSessions { sessions: Vec<SessionId> },
    /// Node-wide counters. Answered with [`Response::Stats`].
    Stats,
    /// Liveness. Answered with [`Response::Pong`].
    Ping,
}

fn default_page() -> u32 {
    MAX_LIST_PAGE
}

impl Request {
    /// The method name as it appears on the wire and in metrics labels.
    pub fn method(&self) -> &'static str {
        match self {
            Request::CreateSession(_) => "create_session",
            Request::UpdateSession { .. } => "update_session",
            Request::DeleteSession { .. } => "delete_session",
            Request::GetSession { .. } => "get_session",
            Request::ListSessions { .. } => "list_sessions",
            Request::AdoptSessions { .. } => "adopt_sessions",
            Request::Stats => "stats",
            Request::Ping => "ping",
        }
    }

    /// Whether an observer connection may send this request.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::GetSession { .. }
                | Request::ListSessions { .. }
                | Request::Stats
                | Request::Ping
        )
    }
}

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSpec {
    /// Opaque to the data plane: the control plane stores what it needs to rebuild its
    /// own state for this session after a restart (at most [`MAX_OWNER_DATA_LEN`] bytes).
    #[serde(default)]
    pub owner_data: String,
    /// The legs, in order; leg ids are their indices. Legs pair up in order: what leg 0
    /// receives goes out of leg 1 and the other way round; likewise 2 ↔ 3, and so on.
    pub legs: Vec<LegSpec>,
    /// Overrides the node's default inactivity timeout for this session.
    #[serde(default)]
    pub inactivity_timeout_ms: Option<u64>,
}

/// One leg of a session: an RTP + RTCP port pair on a media interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegSpec {
    /// The media interface (by `name` in the media config) to allocate ports on.
    pub interface: String,
    /// Where to send RTP, from signalling; `None` until known.
    #[serde(default)]
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP; `None` means the RTP address with port + 1.
    #[serde(default)]
    pub remote_rtcp: Option<SocketAddr>,
    /// Whether the peer's address may be learned from its first packet (symmetric RTP
    /// behind NAT). Default `off`: only the signalled address is accepted.
    #[serde(default)]
    pub latch: LatchMode,
    /// RTP clock rate of the stream (for jitter in milliseconds); default 8000.
    #[serde(default)]
    pub clock_rate: Option<u32>,
}

/// How a leg learns its peer's address (the defence against RTP Bleed / RTP Inject).
///
/// Whatever the mode, the address is locked after the first accepted packet; a packet
/// from any other address is then dropped and counted (`wrong_source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatchMode {
    /// Accept media only from the signalled address, exactly.
    #[default]
    Off,
    /// Accept the first packet from the signalled IP on any port, then lock to it.
    SignalledIp,
    /// Accept the first packet from any address, then lock to it. Only if the media
    /// node's config allows it (`media.allow_latch_any_ip`), for SIP peers behind NAT
    /// that signal unusable addresses.
    AnyIp,
}

/// Changes to an existing session; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionUpdate {
    #[serde(default)]
    pub owner_data: Option<String>,
    /// Per-leg remote address changes, by leg id.
    #[serde(default)]
    pub legs: Vec<LegUpdate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegUpdate {
    pub leg: LegId,
    #[serde(default)]
    pub remote_rtp: Option<SocketAddr>,
    #[serde(default)]
    pub remote_rtcp: Option<SocketAddr>,
}

/// Whether a session's owner is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Its owner's control connection is up.
    Owned,
    /// Its owner is gone; reaped at `reap_in_ms` unless a control plane adopts it.
    Orphaned,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Owned => "owned",
            SessionState::Orphaned => "orphaned",
        }
    }
}

/// A session as the data plane sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub owner: OwnerTag,
    pub owner_data: String,
    pub state: SessionState,
    /// Milliseconds since the session was created.
    pub age_ms: u64,
    /// Milliseconds since the last packet (or since creation if none yet).
    pub idle_ms: u64,
    /// For orphaned sessions: milliseconds until they are reaped.
    #[serde(default)]
    pub reap_in_ms: Option<u64>,
    pub legs: Vec<LegInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegInfo {
    pub leg: LegId,
    pub interface: String,
    pub local_rtp: SocketAddr,
    pub local_rtcp: SocketAddr,
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub stats: LegStats,
}

/// Per-leg counters, from the data plane's point of view ("in" = received on this leg).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_dropped: u64,
    /// RTP packets lost on the way in (sequence gaps, RFC 3550 A.1).
    #[serde(default)]
    pub packets_lost: u64,
    /// Interarrival jitter of received RTP in microseconds (RFC 3550 A.8).
    #[serde(default)]
    pub jitter_us: u64,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    Session(SessionInfo),
    Deleted {
        session: SessionId,
        legs: Vec<LegStats>,
    },
    Sessions {
        sessions: Vec<SessionInfo>,
        /// Pass as `after` to get the next page; `None` on the last page.
        next: Option<SessionId>,
    },
    Adopted {
        adopted: Vec<SessionId>,
        /// Ids that do not exist (reaped already) or belong to another owner.
        refused: Vec<SessionId>,
    },
    Stats(NodeStats),
    Pong,
}

/// Node-wide figures, the same ones the media metrics page shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    pub software: String,
    pub node_name: String,
    pub protocol_version: u16,
    pub uptime_ms: u64,
    pub sessions_owned: u64,
    pub sessions_orphaned: u64,
    pub ports_in_use: u64,
    pub ports_free: u64,
    pub sessions_created_total: u64,
    pub sessions_reaped_unclaimed_total: u64,
    pub sessions_reaped_inactive_total: u64,
    pub control_connections: u64,
}

/// `Ok` or `Err` as JSON: `{"ok": {...}}` or `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcResult {
    Ok(Response),
    Error(RpcError),
}

impl From<Result<Response, RpcError>> for RpcResult {
    fn from(r: Result<Response, RpcError>) -> Self {
        match r {
            Ok(v) => RpcResult::Ok(v),
            Err(e) => RpcResult::Error(e),
        }
    }
}

impl From<RpcResult> for Result<Response, RpcError> {
    fn from(r: RpcResult) -> Self {
        match r {
            RpcResult::Ok(v) => Ok(v),
            RpcResult::Error(e) => Err(e),
        }
    }
}

/// A refused request: a machine-readable code and a sentence for the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    UnknownSession,
    NotOwner,
    PortsExhausted,
    UnknownInterface,
    InvalidRequest,
    UnknownMethod,
    /// An observer sent a request that changes state.
    ReadOnly,
    TooManySessions,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::PortsExhausted => "ports_exhausted",
            ErrorCode::UnknownInterface => "unknown_interface",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Things the data plane tells the owner of a session without being asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The session is gone (inactivity, or its owner never came back); ports are free.
    SessionEnded {
        session: SessionId,
        reason: EndReason,
        legs: Vec<LegStats>,
    },
    /// A leg's media state changed (first packet seen, latched, ...).
    LegStateChanged {
        session: SessionId,
        leg: LegId,
        state: LegState,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// No media for longer than the inactivity timeout.
    Inactive,
    /// The owner did not reconnect and adopt it within the grace period.
    Unclaimed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Inactive => "inactive",
            EndReason::Unclaimed => "unclaimed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LegState {
    /// Ports allocated, nothing received yet.
    Waiting,
    /// Media is arriving.
    Active,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_wire_shape_is_stable() {
        let hello = ClientFrame::Hello(Hello {
            protocol_version: 1,
            software: "sbc-control 0.1.0".into(),
            role: PeerRole::Control,
            owner: "ctl-1".into(),
        });
        let json = serde_json::to_string(&hello).unwrap();
        assert_eq!(
            json,
            r#"{"type":"hello","protocol_version":1,"software":"sbc-control 0.1.0","role":"control","owner":"ctl-1"}"#
        );
    }

    #[test]
    fn request_and_response_round_trip() {
        let frame = ClientFrame::Request {
            id: 7,
            request: Request::CreateSession(SessionSpec {
                owner_data: "{\"call\":1}".into(),
                legs: vec![LegSpec {
                    interface: "public".into(),
                    remote_rtp: Some("192.0.2.1:4000".parse().unwrap()),
                    remote_rtcp: None,
                    latch: LatchMode::SignalledIp,
                    clock_rate: Some(48000),
                }],
                inactivity_timeout_ms: None,
            }),
        };
        let json = serde_json::to_vec(&frame).unwrap();
        assert_eq!(serde_json::from_slice::<ClientFrame>(&json).unwrap(), frame);

        let resp = ServerFrame::Response {
            id: 7,
            result: RpcResult::Error(RpcError::new(ErrorCode::PortsExhausted, "no ports")),
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert!(
            json.contains(r#""error":{"code":"ports_exhausted""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&json).unwrap(), resp);
    }

    #[test]
    fn list_sessions_defaults_apply() {
        let json = r#"{"type":"request","id":1,"request":{"method":"list_sessions"}}"#;
        let frame: ClientFrame = serde_json::from_str(json).unwrap();
        assert_eq!(
            frame,
            ClientFrame::Request {
                id: 1,
                request: Request::ListSessions {
                    owner: None,
                    after: None,
                    limit: MAX_LIST_PAGE
                }
            }
        );
    }
}
