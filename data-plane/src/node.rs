//! One media node's state: the session table, the port pools with their bound sockets,
//! the connected RPC peers, and the metrics that describe them.
//!
//! The RPC driver calls [`Node::handle_request`] for every request and
//! [`Node::handle_timeout`] on the table's deadlines; both return what to send. The node
//! is synchronous and owned behind one mutex on the RPC thread; the packet path (per-core
//! engines) never takes that lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::RngCore;
use sbc_shared::config::MediaConfig;
use sbc_shared::ids::{OwnerTag, SessionId};
use sbc_shared::rpc::msg::{
    EndReason, ErrorCode, Event, LatchMode, LegSpec, LegStats, MAX_LIST_PAGE, NodeStats,
    PROTOCOL_VERSION, PeerRole, Request, Response, RpcError, ServerFrame, SessionInfo,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::engine::Engine;
use crate::engine::core::CoreCommand;
use crate::engine::ports::{BoundPair, bind_pair};
use crate::metrics::MediaMetrics;
use crate::proto::ports::PortPool;
use crate::proto::relay::{DropReason, LegRelay, SessionRelay, SessionShared};
use crate::proto::table::{Ended, Leg, SessionTable};

/// Most legs one session may have (audio + video + data, both sides, with room).
pub const MAX_LEGS: usize = 16;

/// How many random pairs to try when a port is taken by another process.
const BIND_ATTEMPTS: usize = 8;

/// A connection's handle, as the node sees it.
#[derive(Debug)]
pub struct Peer {
    pub owner: OwnerTag,
    pub role: PeerRole,
    pub transport: &'static str,
    /// Frames to push to this peer (events).
    pub tx: mpsc::Sender<ServerFrame>,
    /// Fired to make the connection close (superseded by a newer one).
    pub close: Option<oneshot::Sender<&'static str>>,
}

pub type ConnId = u64;

/// Every reason an RPC connection is closed or refused (labels of
/// `sbc_rpc_connections_closed_total`, listed in docs/operations.md).
pub const CLOSE_REASONS: [&str; 15] = [
    "peer_closed",
    "superseded",
    "too_large",
    "empty",
    "malformed",
    "stalled",
    "truncated",
    "io_error",
    "hello_timeout",
    "closed_before_hello",
    "bad_hello",
    "version_mismatch",
    "too_many_connections",
    "slow_reader",
    "tls_refused",
];

#[derive(Debug)]
struct Placement {
    core: usize,
    shared: Arc<SessionShared>,
}

struct Interface {
    name: String,
    address: std::net::IpAddr,
    dscp: Option<u8>,
    pool: PortPool,
}

pub struct Node {
    node_name: String,
    started: Instant,
    table: SessionTable,
    interfaces: Vec<Interface>,
    /// Which core relays each session, and the counters it shares with us.
    placed: HashMap<SessionId, Placement>,
    engine: Engine,
    allow_latch_any_ip: bool,
    peers: HashMap<ConnId, Peer>,
    /// The live control connection of each owner.
    controllers: HashMap<OwnerTag, ConnId>,
    next_conn: ConnId,
    pub metrics: MediaMetrics,
    rng: rand::rngs::StdRng,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_name", &self.node_name)
            .field("sessions", &self.table.len())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(cfg: &MediaConfig, now: Instant, engine: Engine) -> Self {
        let node = Self {
            node_name: cfg.node_name.clone(),
            started: now,
            table: SessionTable::new(
                cfg.orphan_grace.0,
                cfg.inactivity_timeout.0,
                cfg.max_sessions as usize,
            ),
            interfaces: cfg
                .interfaces
                .iter()
                .map(|i| Interface {
                    name: i.name.clone(),
                    address: i.address,
                    dscp: i.dscp,
                    pool: PortPool::new(i.ports),
                })
                .collect(),
            placed: HashMap::new(),
            engine,
            allow_latch_any_ip: cfg.allow_latch_any_ip,
            peers: HashMap::new(),
            controllers: HashMap::new(),
            next_conn: 1,
            metrics: MediaMetrics::new(),
            rng: rand::SeedableRng::from_os_rng(),
        };
        // Publish every reason at zero so dashboards and alerts see the series at once.
        for reason in [EndReason::Unclaimed, EndReason::Inactive] {
            node.metrics
                .sessions_reaped
                .with_label_values(&[reason.as_str()]);
        }
        for reason in CLOSE_REASONS {
            node.metrics.rpc_closed.with_label_values(&[reason]);
        }
        for i in &node.interfaces {
            for reason in ["exhausted", "bind_failed"] {
                node.metrics
                    .port_failures
                    .with_label_values(&[&i.name, reason]);
            }
        }
        node.refresh_gauges(now);
        node
    }

    pub fn orphan_grace(&self) -> Duration {
        self.table.orphan_grace()
    }

    pub fn interface_names(&self) -> Vec<String> {
        self.interfaces.iter().map(|i| i.name.clone()).collect()
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Register a connection whose hello was accepted. A control connection for an owner
    /// that already has one supersedes it: the old one is told to close and the owner's
    /// sessions are orphaned until the new connection adopts them.
    pub fn connect(&mut self, now: Instant, peer: Peer) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.metrics
            .rpc_connections
            .with_label_values(&[role_label(peer.role), peer.transport])
            .inc();
        if peer.role == PeerRole::Control {
            if let Some(old) = self.controllers.insert(peer.owner.clone(), id) {
                if let Some(old_peer) = self.peers.get_mut(&old) {
                    warn!(owner = %peer.owner, "a newer control connection supersedes the current one");
                    if let Some(close) = old_peer.close.take() {
                        let _ = close.send("superseded");
                    }
                }
                let n = self.table.owner_disconnected(now, &peer.owner);
                if n > 0 {
                    info!(owner = %peer.owner, sessions = n, "sessions orphaned until the new connection adopts them");
                }
            }
            self.metrics
                .control_connected
                .set(self.controllers.len() as i64);
        }
        self.peers.insert(id, peer);
        self.refresh_gauges(now);
        id
    }

    /// A connection ended. If it was its owner's live control connection, that owner's
    /// sessions become orphans (they keep their ports and keep relaying).
    pub fn disconnect(&mut self, now: Instant, conn: ConnId, reason: &'static str) {
        let Some(peer) = self.peers.remove(&conn) else {
            return;
        };
        self.metrics
            .rpc_connections
            .with_label_values(&[role_label(peer.role), peer.transport])
            .dec();
        self.metrics.rpc_closed.with_label_values(&[reason]).inc();
        if peer.role == PeerRole::Control && self.controllers.get(&peer.owner) == Some(&conn) {
            self.controllers.remove(&peer.owner);
            let n = self.table.owner_disconnected(now, &peer.owner);
            if n > 0 {
                warn!(
                    owner = %peer.owner,
                    sessions = n,
                    grace_s = self.table.orphan_grace().as_secs(),
                    "control plane gone: its sessions keep running as orphans until adopted or the grace period ends"
                );
            }
            self.metrics
                .control_connected
                .set(self.controllers.len() as i64);
        }
        self.refresh_gauges(now);
    }

    /// Count a connection refused before registration (bad hello, version mismatch...).
    pub fn count_refused(&self, reason: &'static str) {
        self.metrics.rpc_closed.with_label_values(&[reason]).inc();
    }

    pub fn connection_count(&self) -> usize {
        self.peers.len()
    }

    /// Handle one request from connection `conn`.
    pub fn handle_request(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: Request,
    ) -> Result<Response, RpcError> {
        let method = request.method();
        let result = self.dispatch(now, conn, request);
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        self.metrics
            .rpc_requests
            .with_label_values(&[method, label])
            .inc();
        self.refresh_gauges(now);
        result
    }

    /// Count a request the driver could not decode (answered with an error).
    pub fn count_bad_request(&self, code: ErrorCode) {
        self.metrics
            .rpc_requests
            .with_label_values(&["unknown", code.as_str()])
            .inc();
    }

    fn dispatch(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: Request,
    ) -> Result<Response, RpcError> {
        let peer = self
            .peers
            .get(&conn)
            .ok_or_else(|| RpcError::new(ErrorCode::Internal, "connection not registered"))?;
        if peer.role == PeerRole::Observer && !request.is_read_only() {
            return Err(RpcError::new(
                ErrorCode::ReadOnly,
                format!(
                    "`{}` needs a control connection; this one is an observer",
                    request.method()
                ),
            ));
        }
        let owner = peer.owner.clone();
        match request {
            Request::CreateSession(spec) => {
                self.table.check_capacity()?;
                SessionTable::check_owner_data(&spec.owner_data)?;
                if spec.legs.is_empty() || spec.legs.len() > MAX_LEGS {
                    return Err(RpcError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "a session needs 1 to {MAX_LEGS} legs, got {}",
                            spec.legs.len()
                        ),
                    ));
                }
                if spec.inactivity_timeout_ms == Some(0) {
                    return Err(RpcError::new(
                        ErrorCode::InvalidRequest,
                        "inactivity_timeout_ms must be above 0",
                    ));
                }
                if !self.allow_latch_any_ip && spec.legs.iter().any(|l| l.latch == LatchMode::AnyIp)
                {
                    return Err(RpcError::new(
                        ErrorCode::InvalidRequest,
                        "latch `any_ip` is not allowed on this node (media.allow_latch_any_ip is false)",
                    ));
                }
                let (legs, pairs) = self.allocate_legs(&spec.legs)?;
                let id = self.fresh_id();
                let relays = legs
                    .iter()
                    .zip(&spec.legs)
                    .map(|(leg, s)| {
                        LegRelay::new(leg.remote_rtp, leg.remote_rtcp, s.latch, s.clock_rate)
                    })
                    .collect();
                self.table.insert(
                    now,
                    id,
                    owner,
                    spec.owner_data,
                    spec.inactivity_timeout_ms.map(Duration::from_millis),
                    legs,
                );
                let shared = SessionShared::new(pairs.len());
                let core = self.engine.least_loaded();
                let sockets = pairs.into_iter().map(|p| (p.rtp, p.rtcp)).collect();
                self.engine.send(
                    core,
                    CoreCommand::Add {
                        id,
                        sockets,
                        relay: SessionRelay::new(relays, shared.clone()),
                    },
                );
                self.placed.insert(id, Placement { core, shared });
                self.metrics.sessions_created.inc();
                Ok(Response::Session(
                    self.info(now, id).expect("just inserted"),
                ))
            }
            Request::UpdateSession { session, update } => {
                let changes: Vec<_> = update
                    .legs
                    .iter()
                    .map(|u| (usize::from(u.leg.0), u.remote_rtp, u.remote_rtcp))
                    .collect();
                self.table.update(now, &owner, session, update)?;
                if let Some(p) = self.placed.get(&session) {
                    self.engine.send(
                        p.core,
                        CoreCommand::Update {
                            id: session,
                            legs: changes,
                        },
                    );
                }
                Ok(Response::Session(
                    self.info(now, session).expect("just updated"),
                ))
            }
            Request::DeleteSession { session } => {
                let legs = self.table.delete(&owner, session)?;
                let stats = self.free(session, &legs);
                self.metrics.sessions_deleted.inc();
                Ok(Response::Deleted {
                    session,
                    legs: stats,
                })
            }
            Request::GetSession { session } => self
                .info(now, session)
                .map(Response::Session)
                .ok_or_else(|| {
                    RpcError::new(ErrorCode::UnknownSession, format!("no session {session}"))
                }),
            Request::ListSessions {
                owner,
                after,
                limit,
            } => {
                let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
                let (mut sessions, next) = self.table.list(now, owner.as_ref(), after, limit);
                for s in &mut sessions {
                    self.fill_stats(s);
                }
                Ok(Response::Sessions { sessions, next })
            }
            Request::AdoptSessions { sessions } => {
                let (adopted, refused) = self.table.adopt(&owner, &sessions);
                self.metrics.sessions_adopted.inc_by(adopted.len() as u64);
                if !adopted.is_empty() {
                    info!(%owner, adopted = adopted.len(), refused = refused.len(), "sessions adopted");
                }
                Ok(Response::Adopted { adopted, refused })
            }
            Request::Stats => Ok(Response::Stats(self.stats(now))),
            Request::Ping => Ok(Response::Pong),
            _ => Err(RpcError::new(
                ErrorCode::UnknownMethod,
                "method not supported by this node",
            )),
        }
    }

    fn fresh_id(&mut self) -> SessionId {
        loop {
            let id = SessionId(self.rng.next_u64());
            if id.0 != 0 && !self.table.contains(id) {
                return id;
            }
        }
    }

    fn allocate_legs(&mut self, specs: &[LegSpec]) -> Result<(Vec<Leg>, Vec<BoundPair>), RpcError> {
        let mut legs: Vec<Leg> = Vec::with_capacity(specs.len());
        let mut pairs = Vec::with_capacity(specs.len());
        for spec in specs {
            match self.allocate_leg(spec) {
                Ok((leg, pair)) => {
                    legs.push(leg);
                    pairs.push(pair);
                }
                Err(e) => {
                    for leg in &legs {
                        self.interfaces[leg.interface].pool.release(leg.pair);
                    }
                    return Err(e);
                }
            }
        }
        Ok((legs, pairs))
    }

    fn allocate_leg(&mut self, spec: &LegSpec) -> Result<(Leg, BoundPair), RpcError> {
        let index = self
            .interfaces
            .iter()
            .position(|i| i.name == spec.interface)
            .ok_or_else(|| {
                RpcError::new(
                    ErrorCode::UnknownInterface,
                    format!("no media interface `{}` on this node", spec.interface),
                )
            })?;
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            let random = self.rng.next_u64();
            let iface = &mut self.interfaces[index];
            let Some(pair) = iface.pool.allocate(random) else {
                self.metrics
                    .port_failures
                    .with_label_values(&[&spec.interface, "exhausted"])
                    .inc();
                return Err(RpcError::new(
                    ErrorCode::PortsExhausted,
                    format!(
                        "no free ports left on interface `{}` ({})",
                        iface.name,
                        iface.pool.range()
                    ),
                ));
            };
            let (rtp, rtcp) = iface.pool.ports(pair);
            match bind_pair(iface.address, rtp, rtcp, iface.dscp) {
                Ok(bound) => {
                    let leg = Leg {
                        interface: index,
                        interface_name: iface.name.clone(),
                        pair,
                        local_rtp: SocketAddr::new(iface.address, rtp),
                        local_rtcp: SocketAddr::new(iface.address, rtcp),
                        remote_rtp: spec.remote_rtp,
                        remote_rtcp: spec.remote_rtcp.or_else(|| {
                            spec.remote_rtp
                                .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
                        }),
                        stats: Default::default(),
                    };
                    return Ok((leg, bound));
                }
                Err(e) => {
                    // Another process holds this port; put the pair back and try another.
                    iface.pool.release(pair);
                    self.metrics
                        .port_failures
                        .with_label_values(&[&spec.interface, "bind_failed"])
                        .inc();
                    warn!(interface = %iface.name, port = rtp, error = %e, "cannot bind media port; trying another");
                    last_error = Some(e);
                }
            }
        }
        Err(RpcError::new(
            ErrorCode::PortsExhausted,
            format!(
                "could not bind a port pair on interface `{}` after {BIND_ATTEMPTS} attempts: {}",
                spec.interface,
                last_error.map_or_else(String::new, |e| e.to_string())
            ),
        ))
    }

    /// Stop relaying `session`, close its sockets and free its ports; returns the final
    /// per-leg counters.
    fn free(&mut self, session: SessionId, legs: &[Leg]) -> Vec<LegStats> {
        let stats = match self.placed.remove(&session) {
            Some(p) => {
                self.engine
                    .send(p.core, CoreCommand::Remove { id: session });
                p.shared.legs.iter().map(|c| c.snapshot()).collect()
            }
            None => legs.iter().map(|l| l.stats).collect(),
        };
        // The core closes the sockets when it handles `Remove`; a new session that picks
        // one of these pairs before then fails to bind and tries another pair.
        for leg in legs {
            self.interfaces[leg.interface].pool.release(leg.pair);
        }
        stats
    }

    /// A session's info with live counters from its core.
    fn info(&self, now: Instant, id: SessionId) -> Option<SessionInfo> {
        let mut info = self.table.info(now, id)?;
        self.fill_stats(&mut info);
        Some(info)
    }

    fn fill_stats(&self, info: &mut SessionInfo) {
        if let Some(p) = self.placed.get(&info.id) {
            for (leg, counters) in info.legs.iter_mut().zip(&p.shared.legs) {
                leg.stats = counters.snapshot();
            }
        }
    }

    /// Feed packet activity seen by the cores into the table's inactivity clocks.
    fn collect_activity(&mut self) {
        let epoch = self.engine.epoch();
        for (id, p) in &self.placed {
            let us = p.shared.last_packet_us.load(Ordering::Relaxed);
            if us != 0 {
                self.table.touch(epoch + Duration::from_micros(us), *id);
            }
        }
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.table.poll_timeout()
    }

    /// Reap what is due; tell owners that are connected.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.collect_activity();
        let ended = self.table.handle_timeout(now);
        for Ended {
            id,
            owner,
            reason,
            legs,
        } in ended
        {
            info!(session = %id, %owner, reason = reason.as_str(), "session reaped");
            self.metrics
                .sessions_reaped
                .with_label_values(&[reason.as_str()])
                .inc();
            let stats = self.free(id, &legs);
            if let Some(conn) = self.controllers.get(&owner) {
                if let Some(peer) = self.peers.get(conn) {
                    let event = ServerFrame::Event {
                        event: Event::SessionEnded {
                            session: id,
                            reason,
                            legs: stats,
                        },
                    };
                    if peer.tx.try_send(event).is_err() {
                        warn!(%owner, "control connection is not reading its events; event dropped");
                    }
                }
            }
        }
        self.refresh_gauges(now);
    }

    pub fn stats(&self, now: Instant) -> NodeStats {
        let c = self.table.counters();
        let (in_use, free) = self.port_totals();
        NodeStats {
            software: sbc_shared::software("sbc-media"),
            node_name: self.node_name.clone(),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: u64::try_from(now.saturating_duration_since(self.started).as_millis())
                .unwrap_or(u64::MAX),
            sessions_owned: (self.table.len() - self.table.orphaned()) as u64,
            sessions_orphaned: self.table.orphaned() as u64,
            ports_in_use: in_use,
            ports_free: free,
            sessions_created_total: c.created,
            sessions_reaped_unclaimed_total: c.reaped_unclaimed,
            sessions_reaped_inactive_total: c.reaped_inactive,
            control_connections: self.controllers.len() as u64,
        }
    }

    fn port_totals(&self) -> (u64, u64) {
        self.interfaces.iter().fold((0, 0), |(u, f), i| {
            let free = i.pool.free_pairs() as u64 * 2;
            let total = i.pool.total_pairs() as u64 * 2;
            (u + total - free, f + free)
        })
    }

    /// Bring gauges up to date (after every change, and before each scrape).
    pub fn refresh_gauges(&self, now: Instant) {
        let m = &self.metrics;
        m.process
            .set_uptime(now.saturating_duration_since(self.started));
        let orphaned = self.table.orphaned() as i64;
        m.sessions
            .with_label_values(&["owned"])
            .set(self.table.len() as i64 - orphaned);
        m.sessions.with_label_values(&["orphaned"]).set(orphaned);
        self.refresh_packet_metrics();
        for i in &self.interfaces {
            let free = i.pool.free_pairs() as i64 * 2;
            let total = i.pool.total_pairs() as i64 * 2;
            m.ports_free.with_label_values(&[&i.name]).set(free);
            m.ports_in_use
                .with_label_values(&[&i.name])
                .set(total - free);
        }
    }

    fn refresh_packet_metrics(&self) {
        let m = &self.metrics;
        let (mut pin, mut bin, mut pout, mut bout, mut errs) = (0, 0, 0, 0, 0);
        let mut drops = [0u64; DropReason::ALL.len()];
        for (core, c) in self.engine.counters() {
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            pin += get(&c.packets_in);
            bin += get(&c.bytes_in);
            pout += get(&c.packets_out);
            bout += get(&c.bytes_out);
            errs += get(&c.send_errors);
            for (d, v) in drops.iter_mut().zip(&c.dropped) {
                *d += get(v);
            }
            let label = core.to_string();
            m.advance(
                &format!("core{core}"),
                &m.core_packets.with_label_values(&[&label]),
                get(&c.packets_in),
            );
            m.core_sessions
                .with_label_values(&[&label])
                .set(get(&c.sessions) as i64);
        }
        m.advance("pin", &m.packets.with_label_values(&["in"]), pin);
        m.advance("pout", &m.packets.with_label_values(&["out"]), pout);
        m.advance("bin", &m.bytes.with_label_values(&["in"]), bin);
        m.advance("bout", &m.bytes.with_label_values(&["out"]), bout);
        m.advance("errs", &m.send_errors, errs);
        for (reason, n) in DropReason::ALL.iter().zip(drops) {
            m.advance(
                reason.as_str(),
                &m.dropped.with_label_values(&[reason.as_str()]),
                n,
            );
        }
        m.engine_info
            .with_label_values(&[self.engine.kind().as_str()])
            .set(1);
    }

    /// Sessions and ports currently held (for tests and `status`).
    pub fn session_count(&self) -> usize {
        self.table.len()
    }
}

fn role_label(role: PeerRole) -> &'static str {
    match role {
        PeerRole::Control => "control",
        PeerRole::Observer => "observer",
    }
}
