//! What maps notify: their changes, committed transactions and the manager's changes, and
//! the form a change is stored in.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One change of a map, as its transaction made it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapAction<K, V> {
    /// `key` was added with `value`.
    Add {
        /// The key.
        key: K,
        /// Its value.
        value: V,
    },
    /// The value of `key` went from `old` to `new`.
    Update {
        /// The key.
        key: K,
        /// The value before.
        old: V,
        /// The value after.
        new: V,
    },
    /// `key` (whose value was `old`) was removed.
    Remove {
        /// The key.
        key: K,
        /// The value it had.
        old: V,
    },
    /// Every entry was removed.
    Clear,
}

/// A change delivered to a [`MapObserver`](super::MapObserver): the action, where it stands in
/// the change log, and the transaction that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapChange<K, V> {
    /// What changed.
    pub action: MapAction<K, V>,
    /// The commit sequence number of its transaction (see [`TransactionCommitted`]): the same
    /// on every host.
    pub sequence: u64,
    /// Its own position in the change log (a transaction's changes have consecutive ones, in
    /// write order; the last is the transaction's sequence number).
    pub position: u64,
    /// The operation (transaction) that made it.
    pub operation: Uuid,
}

/// A transaction that changed maps, delivered to
/// [`ManagerObserver::transaction_committed`](super::ManagerObserver::transaction_committed)
/// after its changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransactionCommitted {
    /// Its commit sequence number: strictly increasing in commit order, dense over the
    /// transactions that change maps, equal on every host (the change log's position of its
    /// last change).
    pub sequence: u64,
    /// Its operation.
    pub operation: Uuid,
    /// How many changes it made (rows of the change log that do not decode are skipped and
    /// counted in [`MapStatus::skipped`](super::MapStatus::skipped); a transaction none of
    /// whose rows decode is not announced).
    pub changes: usize,
}

/// A change of the set of maps, delivered to
/// [`ManagerObserver::state_changed`](super::ManagerObserver::state_changed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagerChange {
    /// A map was added to this host's manager: observers subscribed from this notification
    /// get its rebuild, then every change of it.
    Added {
        /// The map's name.
        name: String,
    },
    /// A map was removed ([`ReliableMap::remove_map`](super::ReliableMap::remove_map)): its
    /// entries are gone (its observers got a [`MapAction::Clear`]).
    Removed {
        /// The map's name.
        name: String,
    },
    /// Every map is rebuilt: when the manager starts (recovery), and when it lost coverage of
    /// the change log (it fell behind the trimmed part). Each map's observers get a rebuild
    /// next, before any later change.
    Rebuild {
        /// The maps of this host's manager.
        names: Vec<String>,
    },
}

/// How a change is stored in the change log (a row of `ofx_stream_events`, stream
/// [`MAPS_STREAM`](super::MAPS_STREAM)).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredChange {
    pub(crate) map: String,
    pub(crate) action: StoredAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) new: Option<Value>,
}

/// The stored actions: the map actions, and two of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoredAction {
    Add,
    Update,
    Remove,
    Clear,
    /// The map's content was replaced: its observers are rebuilt.
    Restore,
    /// The map was removed.
    Drop,
}
