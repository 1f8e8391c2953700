//! The admin protocol between `sbcctl` and a running `sbc-control`, over the control
//! plane's admin Unix socket (file permissions are the access control). Frames are the
//! same length-prefixed JSON as the media RPC; one request, one response.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    Status,
    /// Re-read the config file (same as SIGHUP).
    Reload,
    /// Diagnostic: allocate `count` idle media sessions owned by this control plane
    /// (capacity checks, restart drills).
    CreateSessions {
        count: u32,
        #[serde(default)]
        node: Option<String>,
        #[serde(default)]
        interface: Option<String>,
    },
    /// Diagnostic: delete every diagnostic session (on one node, or all).
    DeleteSessions {
        #[serde(default)]
        node: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdminResponse {
    Status(StatusReport),
    Reloaded {
        changes: Vec<String>,
    },
    Created {
        created: u32,
        first_error: Option<String>,
    },
    Deleted {
        deleted: u32,
        first_error: Option<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub software: String,
    pub rpc_protocol: u16,
    pub node_id: String,
    pub config_file: String,
    pub uptime_s: u64,
    pub draining: bool,
    pub sessions: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub media_nodes: Vec<MediaNodeStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MediaNodeStatus {
    pub name: String,
    pub connected: bool,
    /// The node's name and software from its hello.
    pub server: Option<String>,
    pub last_error: Option<String>,
    pub sessions: u64,
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "control plane:  {} ({}), rpc protocol {}",
            self.node_id, self.software, self.rpc_protocol
        )?;
        writeln!(f, "config:         {}", self.config_file)?;
        writeln!(
            f,
            "uptime:         {}s{}",
            self.uptime_s,
            if self.draining { " (draining)" } else { "" }
        )?;
        writeln!(f, "sessions:       {}", self.sessions)?;
        writeln!(
            f,
            "reloads:        {} ok, {} failed",
            self.reloads_ok, self.reloads_failed
        )?;
        writeln!(f, "media nodes:")?;
        for n in &self.media_nodes {
            let state = if n.connected {
                "connected"
            } else {
                "DISCONNECTED"
            };
            write!(
                f,
                "  {:<16} {:<12} sessions {:<6}",
                n.name, state, n.sessions
            )?;
            if let Some(s) = &n.server {
                write!(f, " {s}")?;
            }
            if let Some(e) = &n.last_error {
                write!(f, " last error: {e}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
