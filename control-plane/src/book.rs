//! The control plane's record of the media sessions it owns.
//!
//! Each media session carries an `owner_data` blob that we wrote ([`OwnerData`]). After a
//! restart the book is empty; the media links refill it from the blobs of the sessions
//! they re-adopt. A blob we cannot read (another version, another product) is not
//! adopted: the media node reaps that session after its grace period.

use std::collections::HashMap;
use std::sync::Mutex;

use sbc_shared::ids::SessionId;
use serde::{Deserialize, Serialize};

/// Version of the [`OwnerData`] layout.
pub const OWNER_DATA_VERSION: u32 = 1;

/// What we store with each media session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerData {
    pub v: u32,
    pub purpose: Purpose,
    /// Seconds since the Unix epoch when the session was created.
    pub created_unix: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Purpose {
    /// Created by `sbcctl sessions create`: holds ports, carries no call (capacity and
    /// restart checks).
    Diagnostic { note: String },
}

impl OwnerData {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("owner data always serialises")
    }

    /// `None` if the blob is not ours (or from an incompatible version).
    pub fn decode(blob: &str) -> Option<Self> {
        serde_json::from_str::<OwnerData>(blob)
            .ok()
            .filter(|d| d.v == OWNER_DATA_VERSION)
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub node: String,
    pub data: OwnerData,
}

/// Sessions by id, across media nodes.
#[derive(Debug, Default)]
pub struct SessionBook {
    entries: Mutex<HashMap<SessionId, Entry>>,
}

impl SessionBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: SessionId, entry: Entry) {
        self.lock().insert(id, entry);
    }

    pub fn remove(&self, id: SessionId) -> Option<Entry> {
        self.lock().remove(&id)
    }

    pub fn count_on(&self, node: &str) -> usize {
        self.lock().values().filter(|e| e.node == node).count()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Ids of sessions on `node` matching `filter`.
    pub fn ids_on(&self, node: &str, filter: impl Fn(&Entry) -> bool) -> Vec<SessionId> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.node == node && filter(e))
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_data_round_trips_and_refuses_foreign_blobs() {
        let d = OwnerData {
            v: OWNER_DATA_VERSION,
            purpose: Purpose::Diagnostic { note: "x".into() },
            created_unix: 1,
        };
        assert_eq!(OwnerData::decode(&d.encode()), Some(d));
        assert_eq!(
            OwnerData::decode(
                "{\"v\":99,\"purpose\":{\"kind\":\"diagnostic\",\"note\":\"\"},\"created_unix\":1}"
            ),
            None
        );
        assert_eq!(OwnerData::decode("not json"), None);
        assert_eq!(OwnerData::decode(""), None);
    }
}
