//! The running control plane's shared state: configuration (reloadable), media links,
//! the session book, metrics and the drain switch. Drivers (admin socket, signals, and
//! later SIP) act through it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, UNIX_EPOCH};

use sbc_shared::config::{Config, ControlConfig, MediaNodeConfig, Role};
use sbc_shared::ids::OwnerTag;
use sbc_shared::rpc::msg::{LegSpec, Request, Response, SessionSpec};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{AdminRequest, AdminResponse, MediaNodeStatus, StatusReport};
use crate::book::{Entry, OWNER_DATA_VERSION, OwnerData, Purpose, SessionBook};
use crate::clock;
use crate::driver::media_rpc::{self, MediaLink};
use crate::metrics::ControlMetrics;
use crate::work::WorkTracker;

struct LinkSlot {
    config: MediaNodeConfig,
    link: Arc<MediaLink>,
    task: JoinHandle<()>,
}

pub struct Control {
    config_path: PathBuf,
    config: RwLock<ControlConfig>,
    started: Instant,
    links: Mutex<Vec<LinkSlot>>,
    pub book: Arc<SessionBook>,
    pub metrics: ControlMetrics,
    pub work: Arc<WorkTracker>,
    draining: AtomicBool,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Build the control plane and start a link to every media node. Needs a runtime.
    pub fn start(config_path: PathBuf, config: ControlConfig, now: Instant) -> Arc<Self> {
        let metrics = ControlMetrics::new();
        let work = WorkTracker::new(metrics.work_in_progress.clone());
        let control = Arc::new(Self {
            config_path,
            started: now,
            links: Mutex::new(Vec::new()),
            book: Arc::default(),
            work,
            draining: AtomicBool::new(false),
            metrics,
            config: RwLock::new(config.clone()),
        });
        for node in &config.media_nodes {
            control.start_link(node.clone(), &config);
        }
        control
    }

    fn start_link(&self, node: MediaNodeConfig, cfg: &ControlConfig) {
        let (link, task) = media_rpc::start(
            node.clone(),
            OwnerTag(cfg.node_id.clone()),
            cfg.rpc.clone(),
            self.book.clone(),
            self.metrics.clone(),
        );
        self.lock_links().push(LinkSlot {
            config: node,
            link,
            task,
        });
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, Vec<LinkSlot>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> ControlConfig {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn links(&self) -> Vec<Arc<MediaLink>> {
        self.lock_links().iter().map(|s| s.link.clone()).collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.draining.set(1);
    }

    /// Refresh gauges before a scrape.
    pub fn refresh_gauges(&self) {
        self.metrics
            .process
            .set_uptime(clock::now().saturating_duration_since(self.started));
    }

    /// Re-read the config file. A valid file is applied; an invalid one is refused
    /// with the same text `check-config` prints, and the running config stays.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let result = self.try_reload();
        match &result {
            Ok(changes) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                info!(file = %self.config_path.display(), ?changes, "configuration reloaded");
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["failed"])
                    .inc();
                error!(file = %self.config_path.display(), "configuration reload refused; the running configuration stays:\n{e}");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Vec<String>, String> {
        let new = Config::load(&self.config_path, Role::Control)
            .map_err(|e| e.to_string())?
            .control
            .expect("validated for Role::Control");
        let old = self.config();
        if new.node_id != old.node_id {
            return Err(format!(
                "{}: control.node_id: cannot change from `{}` to `{}` while running (media sessions are tagged with it); restart sbc-control to change it",
                self.config_path.display(),
                old.node_id,
                new.node_id
            ));
        }
        let mut changes = Vec::new();
        if new.metrics != old.metrics {
            changes.push("control.metrics: takes effect at the next restart".to_owned());
        }
        if new.admin_socket != old.admin_socket || new.admin_socket_mode != old.admin_socket_mode {
            changes.push("control.admin_socket: takes effect at the next restart".to_owned());
        }
        if new.log != old.log {
            changes.push("control.log: takes effect at the next restart".to_owned());
        }
        if new.drain_timeout != old.drain_timeout {
            changes.push(format!("control.drain_timeout: now {}", new.drain_timeout));
        }
        if new.rpc != old.rpc {
            changes.push("control.rpc: applies to media connections made from now on".to_owned());
        }
        {
            let mut links = self.lock_links();
            // Stop links that were removed or changed.
            links.retain(|slot| {
                let keep = new.media_nodes.contains(&slot.config);
                if !keep {
                    slot.task.abort();
                    self.metrics.media_node_up.with_label_values(&[&slot.config.name]).set(0);
                    warn!(node = %slot.config.name, "media node removed or changed by reload; its sessions there are orphaned and will be reaped unless re-adopted");
                    changes.push(format!("control.media_nodes: `{}` disconnected", slot.config.name));
                }
                keep
            });
        }
        for node in &new.media_nodes {
            let exists = self.lock_links().iter().any(|s| &s.config == node);
            if !exists {
                changes.push(format!("control.media_nodes: `{}` connecting", node.name));
                self.start_link(node.clone(), &new);
            }
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(changes)
    }

    pub fn status(&self) -> StatusReport {
        let cfg = self.config();
        StatusReport {
            software: sbc_shared::software("sbc-control"),
            rpc_protocol: sbc_shared::rpc::PROTOCOL_VERSION,
            node_id: cfg.node_id,
            config_file: self.config_path.display().to_string(),
            uptime_s: clock::now()
                .saturating_duration_since(self.started)
                .as_secs(),
            draining: self.is_draining(),
            sessions: self.book.len() as u64,
            reloads_ok: self.metrics.config_reloads.with_label_values(&["ok"]).get(),
            reloads_failed: self
                .metrics
                .config_reloads
                .with_label_values(&["failed"])
                .get(),
            media_nodes: self
                .links()
                .iter()
                .map(|l| MediaNodeStatus {
                    name: l.name.clone(),
                    connected: l.is_connected(),
                    server: l.server(),
                    last_error: l.last_error(),
                    sessions: self.book.count_on(&l.name) as u64,
                })
                .collect(),
        }
    }

    fn pick_link(&self, node: Option<&str>) -> Result<Arc<MediaLink>, String> {
        let links = self.links();
        match node {
            Some(name) => links
                .into_iter()
                .find(|l| l.name == name)
                .ok_or_else(|| format!("no media node `{name}` in control.media_nodes")),
            None => links
                .into_iter()
                .find(|l| l.is_connected())
                .ok_or_else(|| "no media node is connected".to_owned()),
        }
    }

    /// Handle one `sbcctl` request.
    pub async fn admin(&self, request: AdminRequest) -> AdminResponse {
        let _work = self.work.start();
        let mutating = !matches!(request, AdminRequest::Status);
        if mutating && self.is_draining() {
            return AdminResponse::Error {
                message: "sbc-control is draining before exit; not taking new work".into(),
            };
        }
        match request {
            AdminRequest::Status => AdminResponse::Status(self.status()),
            AdminRequest::Reload => match self.reload() {
                Ok(changes) => AdminResponse::Reloaded { changes },
                Err(message) => AdminResponse::Error { message },
            },
            AdminRequest::CreateSessions {
                count,
                node,
                interface,
            } => {
                self.create_diagnostic(count, node.as_deref(), interface)
                    .await
            }
            AdminRequest::DeleteSessions { node } => self.delete_diagnostic(node.as_deref()).await,
        }
    }

    async fn create_diagnostic(
        &self,
        count: u32,
        node: Option<&str>,
        interface: Option<String>,
    ) -> AdminResponse {
        const MAX_AT_ONCE: u32 = 100_000;
        if count > MAX_AT_ONCE {
            return AdminResponse::Error {
                message: format!("at most {MAX_AT_ONCE} sessions at once"),
            };
        }
        let link = match self.pick_link(node) {
            Ok(l) => l,
            Err(message) => return AdminResponse::Error { message },
        };
        let Some(interface) = interface.or_else(|| link.interfaces().first().cloned()) else {
            return AdminResponse::Error {
                message: format!("media node `{}` reported no interfaces", link.name),
            };
        };
        let created_unix = clock::wall()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut created = 0;
        let mut first_error = None;
        for _ in 0..count {
            let data = OwnerData {
                v: OWNER_DATA_VERSION,
                purpose: Purpose::Diagnostic {
                    note: "sbcctl sessions create".into(),
                },
                created_unix,
            };
            let spec = SessionSpec {
                owner_data: data.encode(),
                legs: vec![
                    LegSpec {
                        interface: interface.clone(),
                        remote_rtp: None,
                        remote_rtcp: None,
                        latch: Default::default(),
                        clock_rate: None,
                    },
                    LegSpec {
                        interface: interface.clone(),
                        remote_rtp: None,
                        remote_rtcp: None,
                        latch: Default::default(),
                        clock_rate: None,
                    },
                ],
                inactivity_timeout_ms: None,
            };
            match link.call(Request::CreateSession(spec)).await {
                Ok(Response::Session(info)) => {
                    self.book.insert(
                        info.id,
                        Entry {
                            node: link.name.clone(),
                            data,
                        },
                    );
                    created += 1;
                }
                Ok(other) => {
                    first_error.get_or_insert_with(|| format!("unexpected answer {other:?}"));
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.to_string());
                    break;
                }
            }
        }
        self.metrics
            .media_sessions
            .with_label_values(&[&link.name])
            .set(self.book.count_on(&link.name) as i64);
        AdminResponse::Created {
            created,
            first_error,
        }
    }

    async fn delete_diagnostic(&self, node: Option<&str>) -> AdminResponse {
        let mut deleted = 0;
        let mut first_error = None;
        for link in self.links() {
            if node.is_some_and(|n| n != link.name) {
                continue;
            }
            let ids = self.book.ids_on(&link.name, |e| {
                matches!(e.data.purpose, Purpose::Diagnostic { .. })
            });
            for id in ids {
                match link.call(Request::DeleteSession { session: id }).await {
                    Ok(_) => {
                        self.book.remove(id);
                        deleted += 1;
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{}: {e}", link.name));
                    }
                }
            }
            self.metrics
                .media_sessions
                .with_label_values(&[&link.name])
                .set(self.book.count_on(&link.name) as i64);
        }
        AdminResponse::Deleted {
            deleted,
            first_error,
        }
    }
}
