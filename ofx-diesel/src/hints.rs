//! Replaying the operations that other hosts' wake-ups carry as hints (see
//! [`ofx_core::watcher`]), and checking each against its row.
//!
//! A hint is replayed where the watcher receives it, before the reader reads the log: what
//! takes the read's round trip off the path from a commit to this host's invalidations. The log
//! stays the record: each row is still read, and skipped if its hint completed it. Its content
//! is then compared with the hint's (a fingerprint of the commands and items): a hint that
//! differed from its row (forged, or from a host that lies) invalidated the wrong values, so the
//! reader says so loudly and runs the row's invalidations too (or, if it cannot, invalidates
//! every cached value, as it does when it lost track of the log).

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use ofx_core::{Hub, Operation};
use uuid::Uuid;

use crate::reader::ReaderStats;

/// How many hinted operations a ledger remembers until their rows are read: four times what
/// the notifier remembers of completed ones (about 64 bytes each), for a reader kept behind
/// (its database slow or unreachable) while hints still flow.
const MAX_LEDGER: usize = 4 * ofx_core::operation::MAX_KNOWN_OPERATIONS;

/// The fingerprints of the operations replayed (or being replayed) from hints, until their
/// rows are read.
#[derive(Debug, Default)]
pub(crate) struct HintLedger {
    entries: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    entries: HashMap<Uuid, Hinted>,
    /// The uuids in the order they came, to forget the oldest past [`MAX_LEDGER`]; one taken
    /// since stays here until then (taking one costs no scan).
    order: VecDeque<Uuid>,
}

/// An operation replayed from a hint, until its row is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hinted {
    fingerprint: u64,
    /// Its replay completed it (else it is running).
    pub(crate) done: bool,
}

impl HintLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A hint's replay starts; `false` if one of the same operation started before (and did
    /// not fail): this one has nothing to do.
    fn begin(&self, uuid: Uuid, fingerprint: u64) -> bool {
        let mut ledger = self.lock();
        if ledger.entries.contains_key(&uuid) {
            return false;
        }
        let hinted = Hinted {
            fingerprint,
            done: false,
        };
        ledger.entries.insert(uuid, hinted);
        ledger.order.push_back(uuid);
        while ledger.order.len() > MAX_LEDGER {
            if let Some(oldest) = ledger.order.pop_front() {
                ledger.entries.remove(&oldest);
            }
        }
        true
    }

    /// A hint's replay ended: the operation is completed (`true`), or left to its row.
    fn finish(&self, uuid: Uuid, completed: bool) {
        let mut ledger = self.lock();
        if completed {
            if let Some(hinted) = ledger.entries.get_mut(&uuid) {
                hinted.done = true;
            }
        } else {
            ledger.entries.remove(&uuid);
        }
    }

    /// What the hints did for the operation of a row being read (forgotten then). An operation
    /// a hint completed is skipped even when the notifier no longer remembers it (it remembers
    /// [`MAX_KNOWN_OPERATIONS`](ofx_core::operation::MAX_KNOWN_OPERATIONS) operations, and a
    /// reader kept behind while hints flow may read more rows than that later).
    pub(crate) fn take(&self, uuid: Uuid) -> Option<Hinted> {
        self.lock().entries.remove(&uuid)
    }

    /// Checks `operation`, read from its row, against its hint: `false` (logged, counted, and
    /// every cached value invalidated) when they differ.
    pub(crate) fn check_row(
        hub: &Hub,
        stats: &ReaderStats,
        operation: &Operation,
        hinted: Hinted,
    ) -> bool {
        if hinted.fingerprint == fingerprint(operation) {
            return true;
        }
        stats.hint_mismatches.fetch_add(1, Ordering::Relaxed);
        // The hint invalidated what it said; the row's own invalidations run now.
        match hub.notifier().invalidate_again(hub, operation) {
            Ok(()) => tracing::error!(
                uuid = %operation.uuid,
                command = %operation.command_name,
                "a wake-up's hint differed from its operation's row: the row's invalidations ran too"
            ),
            Err(error) => {
                tracing::error!(
                    uuid = %operation.uuid,
                    command = %operation.command_name,
                    %error,
                    "a wake-up's hint differed from its operation's row, whose invalidations cannot run: invalidating every cached value"
                );
                hub.invalidate_everything();
            }
        }
        false
    }
}

/// What an operation's invalidation pass reads: its commands and items.
fn fingerprint(operation: &Operation) -> u64 {
    let mut hasher = DefaultHasher::new();
    operation.command_name.hash(&mut hasher);
    // `serde_json` writes a map's keys in one order: equal values give equal text.
    for part in [
        serde_json::to_string(&operation.command),
        serde_json::to_string(&operation.items),
        serde_json::to_string(&operation.nested),
    ] {
        part.unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

/// Replays a hint: what a reader's [replayer](hint_replayer) runs. A hint that does not
/// decode, whose replay fails, or whose operation another path is replaying, is left to the
/// row.
fn replay_hint(hub: &Hub, stats: &ReaderStats, ledger: &HintLedger, host: &str, hint: &str) {
    let operation = match ofx_core::watcher::decode_hint(hint) {
        Ok(operation) => operation,
        Err(error) => {
            stats.bad_hints.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "dropping a wake-up's hint that is not an operation");
            return;
        }
    };
    // Before the pass: the row, read meanwhile, is checked against it. A hint received twice
    // (a message read twice) is replayed once.
    if !ledger.begin(operation.uuid, fingerprint(&operation)) {
        return;
    }
    // Before the pass, whose invalidations wake live values: they read it to label their
    // next frame (a position the reader reaches in any case: the operation is committed).
    if let Some(sequence) = operation.sequence {
        hub.note_hinted_position(sequence);
    }
    let completion = hub.notifier().complete_hinted(hub, &operation);
    // Only what the hint completed is checked against its row: a hint of an operation
    // completed by another path (this host's own, or its row read first) did nothing.
    ledger.finish(operation.uuid, matches!(completion, Ok(true)));
    match completion {
        Ok(true) => {
            stats.replayed.fetch_add(1, Ordering::Relaxed);
            stats.hinted.fetch_add(1, Ordering::Relaxed);
            if let Some(at) = operation.committed_at {
                crate::telemetry::record_replay_delay(host, crate::row::micros(at));
            }
        }
        Ok(false) => {}
        Err(error) => {
            tracing::debug!(uuid = %operation.uuid, %error, "a wake-up's hint could not be replayed; its row will be");
        }
    }
}

/// The replayer a reader installs in its watcher's hints: replays each hint where the watcher
/// received it, in `runtime`'s context (the file watch's thread is not a runtime's), while the
/// hub lives.
pub(crate) fn hint_replayer(
    hub: &Hub,
    stats: &Arc<ReaderStats>,
    ledger: &Arc<HintLedger>,
    runtime: tokio::runtime::Handle,
) -> ofx_core::watcher::HintReplayer {
    let weak = hub.downgrade();
    let (stats, ledger) = (Arc::clone(stats), Arc::clone(ledger));
    let host = hub.host_id().to_string();
    Arc::new(move |hint: &str| {
        if let Some(hub) = weak.upgrade() {
            let _runtime = runtime.enter();
            replay_hint(&hub, &stats, &ledger, &host, hint);
        }
    })
}

/// Replays the hints that waited in `hints` (received while no replayer was installed).
pub(crate) fn replay_waiting(
    hub: &Hub,
    stats: &ReaderStats,
    ledger: &HintLedger,
    host: &str,
    hints: &ofx_core::watcher::WakeHints,
) {
    for hint in hints.take() {
        replay_hint(hub, stats, ledger, host, &hint);
    }
}
