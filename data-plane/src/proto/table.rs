//! The media node's session table and its ownership rules, sans-IO.
//!
//! Owns: which sessions exist, who owns each, the opaque blob the owner stored with it,
//! and when each must be reaped. It does not own sockets or ports (the caller allocates
//! and binds them, then hands the table the result) and never reads the clock.
//!
//! Ownership (the rule that lets media survive a control-plane restart):
//! - A session created over a control connection is **owned** by that connection's
//!   owner tag.
//! - When an owner's connection goes away, each of its sessions becomes **orphaned**
//!   and keeps its ports and state; media keeps flowing.
//! - A control connection with the same owner tag may **adopt** orphaned sessions; an
//!   orphan nobody adopts within `orphan_grace` is reaped (`EndReason::Unclaimed`).
//! - Independently, a session without packets for its inactivity timeout is reaped
//!   (`EndReason::Inactive`).
//!
//! Driving contract: `create`/`adopt`/`delete`/`owner_*`/`touch` as things happen;
//! call [`SessionTable::handle_timeout`] at or after [`SessionTable::poll_timeout`] and
//! free the ports of every session it returns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sbc_shared::ids::{LegId, OwnerTag, SessionId};
use sbc_shared::rpc::msg::{
    EndReason, ErrorCode, LegInfo, LegStats, LegUpdate, MAX_OWNER_DATA_LEN, RpcError, SessionInfo,
    SessionState, SessionUpdate,
};

use super::ports::PairIndex;

/// How often orphan and inactivity deadlines are checked. Reaping is at most this late;
/// a sweep is O(sessions) and cheap next to the packets those sessions carry.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// A leg's ports and addresses as the table keeps them.
#[derive(Clone, Debug)]
pub struct Leg {
    pub interface: usize,
    pub interface_name: String,
    pub pair: PairIndex,
    pub local_rtp: SocketAddr,
    pub local_rtcp: SocketAddr,
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub stats: LegStats,
}

#[derive(Debug)]
struct Session {
    owner: OwnerTag,
    owner_data: String,
    created: Instant,
    last_activity: Instant,
    inactivity_timeout: Duration,
    /// `Some(since)` while the owner has not adopted it after a disconnect.
    orphaned_since: Option<Instant>,
    legs: Vec<Leg>,
}

/// A session the table has removed; the caller frees `legs`' ports and tells the owner.
#[derive(Debug)]
pub struct Ended {
    pub id: SessionId,
    pub owner: OwnerTag,
    pub reason: EndReason,
    pub legs: Vec<Leg>,
}

/// Counters since start, for stats and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounters {
    pub created: u64,
    pub deleted: u64,
    pub adopted: u64,
    pub reaped_unclaimed: u64,
    pub reaped_inactive: u64,
}

#[derive(Debug)]
pub struct SessionTable {
    sessions: BTreeMap<SessionId, Session>,
    orphan_grace: Duration,
    default_inactivity: Duration,
    max_sessions: usize,
    next_sweep: Option<Instant>,
    orphaned: usize,
    counters: TableCounters,
}

impl SessionTable {
    pub fn new(orphan_grace: Duration, default_inactivity: Duration, max_sessions: usize) -> Self {
        Self {
            sessions: BTreeMap::new(),
            orphan_grace,
            default_inactivity,
            max_sessions,
            next_sweep: None,
            orphaned: 0,
            counters: TableCounters::default(),
        }
    }

    pub fn orphan_grace(&self) -> Duration {
        self.orphan_grace
    }

    /// Whether another session fits; check before allocating ports.
    pub fn check_capacity(&self) -> Result<(), RpcError> {
        if self.sessions.len() >= self.max_sessions {
            return Err(RpcError::new(
                ErrorCode::TooManySessions,
                format!(
                    "this node holds its maximum of {} sessions",
                    self.max_sessions
                ),
            ));
        }
        Ok(())
    }

    /// Validate what the owner wants to store, before any port is allocated.
    pub fn check_owner_data(data: &str) -> Result<(), RpcError> {
        if data.len() > MAX_OWNER_DATA_LEN {
            return Err(RpcError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "owner_data of {} bytes exceeds {MAX_OWNER_DATA_LEN}",
                    data.len()
                ),
            ));
        }
        Ok(())
    }

    /// Insert a session whose ports the caller has bound. `id` must be fresh.
    pub fn insert(
        &mut self,
        now: Instant,
        id: SessionId,
        owner: OwnerTag,
        owner_data: String,
        inactivity_timeout: Option<Duration>,
        legs: Vec<Leg>,
    ) {
        debug_assert!(!self.sessions.contains_key(&id));
        self.sessions.insert(
            id,
            Session {
                owner,
                owner_data,
                created: now,
                last_activity: now,
                inactivity_timeout: inactivity_timeout.unwrap_or(self.default_inactivity),
                orphaned_since: None,
                legs,
            },
        );
        self.counters.created += 1;
        self.arm(now);
    }

    pub fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Apply an owner's update. Only the owner may change a session.
    pub fn update(
        &mut self,
        now: Instant,
        owner: &OwnerTag,
        id: SessionId,
        update: SessionUpdate,
    ) -> Result<SessionInfo, RpcError> {
        let s = self.owned_mut(owner, id)?;
        if let Some(data) = &update.owner_data {
            Self::check_owner_data(data)?;
        }
        for LegUpdate { leg, .. } in &update.legs {
            if usize::from(leg.0) >= s.legs.len() {
                return Err(RpcError::new(
                    ErrorCode::InvalidRequest,
                    format!("session {id} has no {leg}"),
                ));
            }
        }
        if let Some(data) = update.owner_data {
            s.owner_data = data;
        }
        for u in update.legs {
            let leg = &mut s.legs[usize::from(u.leg.0)];
            if u.remote_rtp.is_some() {
                leg.remote_rtp = u.remote_rtp;
            }
            if u.remote_rtcp.is_some() {
                leg.remote_rtcp = u.remote_rtcp;
            }
        }
        Ok(self.info(now, id).expect("the session was just updated"))
    }

    /// Remove a session at its owner's request; the caller frees the ports.
    pub fn delete(&mut self, owner: &OwnerTag, id: SessionId) -> Result<Vec<Leg>, RpcError> {
        self.owned_mut(owner, id)?;
        let s = self.sessions.remove(&id).expect("checked above");
        if s.orphaned_since.is_some() {
            self.orphaned -= 1;
        }
        self.counters.deleted += 1;
        Ok(s.legs)
    }

    fn owned_mut(&mut self, owner: &OwnerTag, id: SessionId) -> Result<&mut Session, RpcError> {
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| RpcError::new(ErrorCode::UnknownSession, format!("no session {id}")))?;
        if &s.owner != owner {
            return Err(RpcError::new(
                ErrorCode::NotOwner,
                format!("session {id} belongs to `{}`", s.owner),
            ));
        }
        if s.orphaned_since.is_some() {
            return Err(RpcError::new(
                ErrorCode::NotOwner,
                format!("session {id} is orphaned: adopt it first"),
            ));
        }
        Ok(s)
    }

    /// The owner's control connection went away: orphan all its sessions.
    pub fn owner_disconnected(&mut self, now: Instant, owner: &OwnerTag) -> usize {
        let mut n = 0;
        for s in self.sessions.values_mut() {
            if &s.owner == owner && s.orphaned_since.is_none() {
                s.orphaned_since = Some(now);
                n += 1;
            }
        }
        self.orphaned += n;
        self.arm(now);
        n
    }

    /// Adopt sessions for `owner`. Sessions of other owners, or gone, are refused.
    pub fn adopt(
        &mut self,
        owner: &OwnerTag,
        ids: &[SessionId],
    ) -> (Vec<SessionId>, Vec<SessionId>) {
        let mut adopted = Vec::new();
        let mut refused = Vec::new();
        for &id in ids {
            match self.sessions.get_mut(&id) {
                Some(s) if &s.owner == owner => {
                    if s.orphaned_since.take().is_some() {
                        self.orphaned -= 1;
                        self.counters.adopted += 1;
                    }
                    adopted.push(id);
                }
                _ => refused.push(id),
            }
        }
        (adopted, refused)
    }

    /// Packets arrived for a session (from the engine; batched, not per packet).
    pub fn touch(&mut self, now: Instant, id: SessionId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.last_activity = now;
        }
    }

    /// When [`Self::handle_timeout`] next has work; `None` while the table is empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Reap every session whose orphan grace or inactivity timeout has run out.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Ended> {
        if self.next_sweep.is_none_or(|t| now < t) {
            return Vec::new();
        }
        let grace = self.orphan_grace;
        let mut ended = Vec::new();
        self.sessions.retain(|&id, s| {
            let reason = if now.saturating_duration_since(s.last_activity) >= s.inactivity_timeout {
                EndReason::Inactive
            } else if s
                .orphaned_since
                .is_some_and(|since| now.saturating_duration_since(since) >= grace)
            {
                EndReason::Unclaimed
            } else {
                return true;
            };
            ended.push(Ended {
                id,
                owner: s.owner.clone(),
                reason,
                legs: std::mem::take(&mut s.legs),
            });
            if s.orphaned_since.is_some() {
                self.orphaned -= 1;
            }
            false
        });
        for e in &ended {
            match e.reason {
                EndReason::Inactive => self.counters.reaped_inactive += 1,
                EndReason::Unclaimed => self.counters.reaped_unclaimed += 1,
            }
        }
        self.next_sweep = None;
        self.arm(now);
        ended
    }

    fn arm(&mut self, now: Instant) {
        if self.sessions.is_empty() {
            self.next_sweep = None;
        } else if self.next_sweep.is_none() {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
    }

    pub fn info(&self, now: Instant, id: SessionId) -> Option<SessionInfo> {
        let s = self.sessions.get(&id)?;
        Some(SessionInfo {
            id,
            owner: s.owner.clone(),
            owner_data: s.owner_data.clone(),
            state: if s.orphaned_since.is_some() {
                SessionState::Orphaned
            } else {
                SessionState::Owned
            },
            age_ms: millis(now.saturating_duration_since(s.created)),
            idle_ms: millis(now.saturating_duration_since(s.last_activity)),
            reap_in_ms: s
                .orphaned_since
                .map(|since| millis((since + self.orphan_grace).saturating_duration_since(now))),
            legs: s
                .legs
                .iter()
                .enumerate()
                .map(|(i, l)| LegInfo {
                    leg: LegId(u16::try_from(i).expect("legs per session are bounded")),
                    interface: l.interface_name.clone(),
                    local_rtp: l.local_rtp,
                    local_rtcp: l.local_rtcp,
                    remote_rtp: l.remote_rtp,
                    remote_rtcp: l.remote_rtcp,
                    stats: l.stats,
                })
                .collect(),
        })
    }

    /// One page of sessions ordered by id.
    pub fn list(
        &self,
        now: Instant,
        owner: Option<&OwnerTag>,
        after: Option<SessionId>,
        limit: usize,
    ) -> (Vec<SessionInfo>, Option<SessionId>) {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Vec::new();
        let mut last = None;
        let mut more = false;
        for (&id, s) in self.sessions.range((start, Bound::Unbounded)) {
            if owner.is_some_and(|o| o != &s.owner) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(self.info(now, id).expect("iterating existing sessions"));
            last = Some(id);
        }
        (page, if more { last } else { None })
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn orphaned(&self) -> usize {
        self.orphaned
    }

    pub fn counters(&self) -> TableCounters {
        self.counters
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(port: u16) -> Leg {
        Leg {
            interface: 0,
            interface_name: "lo".into(),
            pair: PairIndex(u32::from(port)),
            local_rtp: SocketAddr::from(([127, 0, 0, 1], port)),
            local_rtcp: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            remote_rtp: None,
            remote_rtcp: None,
            stats: LegStats::default(),
        }
    }

    fn table() -> SessionTable {
        SessionTable::new(Duration::from_secs(30), Duration::from_secs(600), 10)
    }

    #[test]
    fn orphans_are_reaped_after_grace_unless_adopted() {
        let t0 = crate::clock::now(); // a base instant; time is then driven by hand
        let mut t = table();
        let a: OwnerTag = "ctl-a".into();
        for i in 0..4 {
            t.insert(
                t0,
                SessionId(i),
                a.clone(),
                format!("{i}"),
                None,
                vec![leg(40000)],
            );
        }
        assert_eq!(t.owner_disconnected(t0 + Duration::from_secs(1), &a), 4);
        assert_eq!(t.orphaned(), 4);
        // Restarted owner adopts two of them, and names one that does not exist.
        let (adopted, refused) = t.adopt(&a, &[SessionId(0), SessionId(1), SessionId(99)]);
        assert_eq!(adopted, vec![SessionId(0), SessionId(1)]);
        assert_eq!(refused, vec![SessionId(99)]);
        // Just before the grace period ends: nothing reaped.
        assert!(t.handle_timeout(t0 + Duration::from_secs(30)).is_empty());
        let ended = t.handle_timeout(t0 + Duration::from_secs(31));
        let ids: Vec<_> = ended.iter().map(|e| (e.id, e.reason)).collect();
        assert_eq!(
            ids,
            vec![
                (SessionId(2), EndReason::Unclaimed),
                (SessionId(3), EndReason::Unclaimed)
            ]
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.orphaned(), 0);
        assert_eq!(t.counters().reaped_unclaimed, 2);
        assert_eq!(t.counters().adopted, 2);
    }

    #[test]
    fn another_owner_cannot_adopt_delete_or_update() {
        let t0 = crate::clock::now(); // a base instant; time is then driven by hand
        let mut t = table();
        t.insert(
            t0,
            SessionId(1),
            "ctl-a".into(),
            String::new(),
            None,
            vec![leg(40000)],
        );
        let b: OwnerTag = "ctl-b".into();
        assert_eq!(t.adopt(&b, &[SessionId(1)]).1, vec![SessionId(1)]);
        assert_eq!(
            t.delete(&b, SessionId(1)).unwrap_err().code,
            ErrorCode::NotOwner
        );
        assert_eq!(
            t.update(t0, &b, SessionId(1), SessionUpdate::default())
                .unwrap_err()
                .code,
            ErrorCode::NotOwner
        );
        assert_eq!(
            t.delete(&b, SessionId(7)).unwrap_err().code,
            ErrorCode::UnknownSession
        );
    }

    #[test]
    fn inactivity_reaps_even_owned_sessions_and_touch_defers_it() {
        let t0 = crate::clock::now(); // a base instant; time is then driven by hand
        let mut t = table();
        let a: OwnerTag = "a".into();
        t.insert(
            t0,
            SessionId(1),
            a.clone(),
            String::new(),
            Some(Duration::from_secs(5)),
            vec![leg(40000)],
        );
        t.insert(
            t0,
            SessionId(2),
            a.clone(),
            String::new(),
            Some(Duration::from_secs(5)),
            vec![leg(40002)],
        );
        t.touch(t0 + Duration::from_secs(4), SessionId(2));
        let ended = t.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(ended.len(), 1);
        assert_eq!(
            (ended[0].id, ended[0].reason),
            (SessionId(1), EndReason::Inactive)
        );
        assert_eq!(ended[0].legs.len(), 1, "ports are handed back for freeing");
        assert!(t.poll_timeout().is_some());
        let ended = t.handle_timeout(t0 + Duration::from_secs(9));
        assert_eq!(ended.len(), 1);
        assert!(t.poll_timeout().is_none(), "an empty table needs no timer");
    }

    #[test]
    fn orphaned_sessions_refuse_changes_until_adopted() {
        let t0 = crate::clock::now(); // a base instant; time is then driven by hand
        let mut t = table();
        let a: OwnerTag = "a".into();
        t.insert(
            t0,
            SessionId(1),
            a.clone(),
            String::new(),
            None,
            vec![leg(40000)],
        );
        t.owner_disconnected(t0, &a);
        assert_eq!(
            t.delete(&a, SessionId(1)).unwrap_err().code,
            ErrorCode::NotOwner
        );
        t.adopt(&a, &[SessionId(1)]);
        assert_eq!(t.delete(&a, SessionId(1)).unwrap().len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn list_pages_by_id_and_filters_by_owner() {
        let t0 = crate::clock::now(); // a base instant; time is then driven by hand
        let mut t = table();
        for i in 0..7 {
            let owner = if i % 2 == 0 { "a" } else { "b" };
            t.insert(t0, SessionId(i), owner.into(), String::new(), None, vec![]);
        }
        let a: OwnerTag = "a".into();
        let (p1, next) = t.list(t0, Some(&a), None, 2);
        assert_eq!(p1.iter().map(|s| s.id.0).collect::<Vec<_>>(), vec![0, 2]);
        let (p2, next) = t.list(t0, Some(&a), next, 2);
        assert_eq!(p2.iter().map(|s| s.id.0).collect::<Vec<_>>(), vec![4, 6]);
        assert_eq!(next, None);
        let (all, _) = t.list(t0, None, None, 100);
        assert_eq!(all.len(), 7);
    }

    #[test]
    fn capacity_is_enforced() {
        let t0 = crate::clock::now(); // a base instant; time is then driven by hand
        let mut t = SessionTable::new(Duration::from_secs(1), Duration::from_secs(60), 1);
        assert!(t.check_capacity().is_ok());
        t.insert(t0, SessionId(1), "a".into(), String::new(), None, vec![]);
        assert_eq!(
            t.check_capacity().unwrap_err().code,
            ErrorCode::TooManySessions
        );
    }
}
