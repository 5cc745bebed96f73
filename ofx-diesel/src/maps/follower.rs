//! The maps' follower: one task per manager and hub that reads the change log in order and
//! delivers it (changes, then the transaction), rebuilds observers, and trims the log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use diesel_async::{AsyncConnection, SimpleAsyncConnection, TransactionManager};
use ofx_core::Hub;
use ofx_core::background::spawn_supervised;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::MAPS_STREAM;
use super::change::{ManagerChange, StoredAction, StoredChange, TransactionCommitted};
use super::manager::{ManagerInner, lock};
use super::map::ErasedMap;
use crate::backend::Backend;
use crate::following::Backoff;
use crate::reader::jitter;
use crate::row::micros;
use crate::state::rows::StreamRow;
use crate::{Error, Result};

/// Starts the follower of `inner` on `hub`.
pub(crate) fn start<B: Backend>(
    inner: Arc<ManagerInner<B>>,
    hub: &Hub,
    wakes: watch::Receiver<u64>,
) {
    let poll = crate::following::poll_period(&inner.db, hub, inner.settings.poll_period);
    let stop = hub.shutdown_token();
    let health = Arc::clone(&inner.health);
    spawn_supervised("ofx-diesel maps follower", health, async move {
        follow(&inner, &stop, wakes, poll).await;
        inner
            .progress
            .send_modify(|progress| progress.stopped = true);
    });
}

async fn follow<B: Backend>(
    inner: &Arc<ManagerInner<B>>,
    stop: &CancellationToken,
    mut wakes: watch::Receiver<u64>,
    poll: Duration,
) {
    let mut backoff = Backoff::new(inner.settings.retry_min, inner.settings.retry_max);
    // Recovery: start at the head; every observer is rebuilt (as of the head or later).
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = head(inner) => outcome,
        };
        match outcome {
            Ok(head) => {
                inner
                    .progress
                    .send_modify(|progress| progress.position = head);
                break;
            }
            Err(error) => {
                record_error(
                    inner,
                    error,
                    "reading the maps' change log failed; retrying",
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff.step()) => {}
                }
            }
        }
    }
    backoff.reset();
    let _ = inner.take_added(); // covered by the rebuild notification
    let names: Vec<String> = inner
        .maps()
        .iter()
        .map(|map| map.name().to_owned())
        .collect();
    inner.notify(&ManagerChange::Rebuild { names });
    for map in inner.maps() {
        map.reset();
    }
    let mut last_trim = Instant::now();
    let mut wakes_open = true;
    loop {
        for name in inner.take_added() {
            inner.notify(&ManagerChange::Added { name });
        }
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = async {
                rebuild_pending(inner).await?;
                if !inner.progress.borrow().ready {
                    inner.progress.send_modify(|progress| progress.ready = true);
                    tracing::info!(position = inner.progress.borrow().position, "map manager ready");
                }
                refresh(inner).await
            } => outcome,
        };
        let retry = match outcome {
            Ok(()) => {
                backoff.reset();
                *lock(&inner.last_error) = None;
                false
            }
            Err(error) => {
                record_error(
                    inner,
                    error,
                    "following the maps' change log failed; retrying",
                );
                true
            }
        };
        if let Some(retention) = inner.settings.change_retention
            && last_trim.elapsed() >= inner.settings.trim_period
        {
            last_trim = Instant::now();
            let timeout = inner.settings.refresh_timeout;
            let trimmed = tokio::select! {
                () = stop.cancelled() => return,
                trimmed = tokio::time::timeout(timeout, trim(inner, retention)) => trimmed,
            };
            match trimmed {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "trimming the maps' change log failed"),
                Err(_) => tracing::warn!(?timeout, "trimming the maps' change log timed out"),
            }
        }
        if retry {
            let delay = backoff.step();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
                () = async {
                    tokio::time::sleep(delay.min(Duration::from_millis(100))).await;
                    inner.wake.notified().await;
                } => {}
            }
        } else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = inner.wake.notified() => {}
                changed = wakes.changed(), if wakes_open => wakes_open = changed.is_ok(),
                () = tokio::time::sleep(jitter(poll, 0.1)) => {}
            }
        }
    }
}

fn record_error<B: Backend>(inner: &ManagerInner<B>, error: Error, what: &str) {
    tracing::warn!(%error, "{what}");
    *lock(&inner.last_error) = Some(error.to_string());
}

async fn connection<B: Backend>(inner: &ManagerInner<B>) -> Result<B::Pooled> {
    let timeout = inner.settings.refresh_timeout;
    tokio::time::timeout(timeout, B::get(&inner.db.inner.pool))
        .await
        .map_err(|_| Error::RefreshTimeout(timeout))?
}

async fn head<B: Backend>(inner: &ManagerInner<B>) -> Result<u64> {
    let mut connection = connection(inner).await?;
    let timeout = inner.settings.refresh_timeout;
    match tokio::time::timeout(timeout, B::stream_head(&mut connection, MAPS_STREAM)).await {
        Ok(head) => Ok(u64::try_from(head?).unwrap_or(0)),
        Err(_) => {
            B::discard(connection);
            Err(Error::RefreshTimeout(timeout))
        }
    }
}

/// Deletes changes appended before `older_than` ago, all but the last.
pub(crate) async fn trim<B: Backend>(
    inner: &ManagerInner<B>,
    older_than: Duration,
) -> Result<usize> {
    let mut connection = connection(inner).await?;
    let before =
        micros(SystemTime::now()) - i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
    B::trim_stream(&mut connection, MAPS_STREAM, before).await
}

// ===== rebuilds =====

/// Rebuilds every observer that needs it, each from a consistent snapshot of the database.
async fn rebuild_pending<B: Backend>(inner: &Arc<ManagerInner<B>>) -> Result<()> {
    for map in inner.maps() {
        for id in map.needs_rebuild() {
            rebuild_one(inner, &map, id).await?;
        }
    }
    Ok(())
}

async fn rebuild_one<B: Backend>(
    inner: &Arc<ManagerInner<B>>,
    map: &Arc<dyn ErasedMap>,
    id: u64,
) -> Result<()> {
    let (head_sender, head_receiver) = oneshot::channel();
    let (entries_sender, entries) = mpsc::channel(256);
    let reader = tokio::spawn(read_snapshot(
        Arc::clone(inner),
        map.name().to_owned(),
        head_sender,
        entries_sender,
    ));
    let Ok(sequence) = head_receiver.await else {
        map.rebuild_failed(id);
        return Err(match reader.await {
            Ok(Err(error)) => error,
            _ => Error::MapAttach("a rebuild's read ended early"),
        });
    };
    map.rebuild_observer(id, sequence, entries, Arc::clone(&inner.skipped))
        .await;
    match reader.await {
        Ok(Ok(())) => {
            inner.counters.rebuilds.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(error)) => {
            map.rebuild_failed(id);
            Err(error)
        }
        Err(_) => {
            map.rebuild_failed(id);
            Err(Error::MapAttach("a rebuild's read panicked"))
        }
    }
}

/// In one transaction (a consistent snapshot): the change log's head, then `map`'s entries
/// page by page. Ends quietly when the observer stops reading.
async fn read_snapshot<B: Backend>(
    inner: Arc<ManagerInner<B>>,
    map: String,
    head_sender: oneshot::Sender<u64>,
    entries: mpsc::Sender<(String, String)>,
) -> Result<()> {
    type Manager<B> = <<B as Backend>::Connection as AsyncConnection>::TransactionManager;
    let mut connection = connection(&inner).await?;
    Manager::<B>::begin_transaction(&mut connection).await?;
    let read = async {
        if let Some(statement) = B::snapshot_statement() {
            connection.batch_execute(statement).await?;
        }
        let head = u64::try_from(B::stream_head(&mut connection, MAPS_STREAM).await?).unwrap_or(0);
        if head_sender.send(head).is_err() {
            return Ok(());
        }
        let page = inner.settings.rebuild_page.max(1);
        let mut after: Option<String> = None;
        loop {
            let rows = B::map_entries(&mut connection, &map, after.as_deref(), page).await?;
            let short = (rows.len() as i64) < page;
            after = rows.last().map(|(key, _)| key.clone());
            for row in rows {
                if entries.send(row).await.is_err() {
                    return Ok(());
                }
            }
            if short {
                return Ok(());
            }
        }
    };
    let outcome: Result<()> = read.await;
    // Read only: ending it either way is the same.
    let ended = Manager::<B>::rollback_transaction(&mut connection).await;
    if ended.is_err() {
        B::discard(connection);
    }
    outcome
}

// ===== following =====

/// Reads the change log after the delivered position until its head, delivering whole
/// transactions in order.
async fn refresh<B: Backend>(inner: &Arc<ManagerInner<B>>) -> Result<()> {
    let epoch = inner.refresh_started.fetch_add(1, Ordering::SeqCst) + 1;
    let batch = inner.settings.read_batch.max(1);
    let timeout = inner.settings.refresh_timeout;
    let mut connection = connection(inner).await?;
    loop {
        let position = inner.progress.borrow().position;
        let read = read_transactions::<B>(&mut connection, position, batch);
        let (rows, full) = match tokio::time::timeout(timeout, read).await {
            Ok(read) => read?,
            Err(_) => {
                B::discard(connection);
                return Err(Error::RefreshTimeout(timeout));
            }
        };
        if rows.is_empty() {
            break;
        }
        let dense = rows
            .iter()
            .zip(position + 1..)
            .all(|(row, expected)| u64::try_from(row.position).ok() == Some(expected));
        let last = rows
            .last()
            .and_then(|row| u64::try_from(row.position).ok())
            .unwrap_or(position);
        if dense {
            deliver(inner, &rows);
        } else {
            coverage_lost(inner, position, &rows);
        }
        if inner
            .maps()
            .iter()
            .any(|map| !map.needs_rebuild().is_empty())
        {
            // Observers whose rebuild is due (after a coverage loss, a restore) get it before
            // the next changes, and before the position is published.
            drop(connection);
            rebuild_pending(inner).await?;
            connection = self::connection(inner).await?;
        }
        inner
            .progress
            .send_modify(|progress| progress.position = progress.position.max(last));
        if !full {
            break;
        }
    }
    inner
        .progress
        .send_modify(|progress| progress.refreshed = progress.refreshed.max(epoch));
    Ok(())
}

/// The rows after `position` that make whole transactions (a transaction's rows are
/// consecutive: map writers queue), and whether more may follow.
async fn read_transactions<B: Backend>(
    connection: &mut B::Connection,
    position: u64,
    batch: i64,
) -> Result<(Vec<StreamRow>, bool)> {
    let after = i64::try_from(position).unwrap_or(i64::MAX);
    let mut rows = B::read_stream(connection, MAPS_STREAM, after, i64::MAX, batch).await?;
    if (rows.len() as i64) < batch {
        return Ok((rows, false));
    }
    let Some(last_operation) = rows.last().map(|row| row.operation_uuid.clone()) else {
        return Ok((rows, false));
    };
    if rows.iter().any(|row| row.operation_uuid != last_operation) {
        // The last transaction may go on in the next rows: leave it for the next read.
        while rows
            .last()
            .is_some_and(|row| row.operation_uuid == last_operation)
        {
            rows.pop();
        }
        return Ok((rows, true));
    }
    // One transaction larger than a batch: read until it ends.
    loop {
        let after = rows.last().map_or(after, |row| row.position);
        let more = B::read_stream(connection, MAPS_STREAM, after, i64::MAX, batch).await?;
        let short = (more.len() as i64) < batch;
        match more
            .iter()
            .position(|row| row.operation_uuid != last_operation)
        {
            Some(end) => {
                rows.extend(more.into_iter().take(end));
                return Ok((rows, true));
            }
            None => {
                rows.extend(more);
                if short {
                    return Ok((rows, false));
                }
            }
        }
    }
}

/// Delivers whole transactions: each change to its map's observers and invalidates the
/// reads it affects, then the transaction to the manager's observers.
fn deliver<B: Backend>(inner: &ManagerInner<B>, rows: &[StreamRow]) {
    let hub = inner.hub();
    let mut start = 0;
    while start < rows.len() {
        let operation = &rows[start].operation_uuid;
        let end = rows[start..]
            .iter()
            .position(|row| &row.operation_uuid != operation)
            .map_or(rows.len(), |offset| start + offset);
        let group = &rows[start..end];
        let sequence = group
            .last()
            .and_then(|row| u64::try_from(row.position).ok())
            .unwrap_or(0);
        let Ok(operation_id) = Uuid::parse_str(operation) else {
            // Not written by a map (every operation has a uuid): skipped, not announced.
            for row in group {
                skip(
                    inner,
                    u64::try_from(row.position).unwrap_or(0),
                    "not an operation's change",
                );
            }
            start = end;
            continue;
        };
        let mut decoded = 0;
        for row in group {
            let position = u64::try_from(row.position).unwrap_or(0);
            let change: StoredChange = match serde_json::from_str(&row.body) {
                Ok(change) => change,
                Err(error) => {
                    skip(inner, position, &error.to_string());
                    continue;
                }
            };
            let Some(map) = inner.map_named(&change.map) else {
                // A map this host does not have: a change all the same.
                inner.counters.changes.fetch_add(1, Ordering::Relaxed);
                decoded += 1;
                continue;
            };
            if let Err(reason) = map.deliver(&change, position, sequence, operation_id) {
                skip(inner, position, &reason);
                continue;
            }
            inner.counters.changes.fetch_add(1, Ordering::Relaxed);
            decoded += 1;
            if let Some(hub) = &hub {
                metrics::counter!(
                    crate::telemetry::MAP_CHANGES_APPLIED,
                    "host" => hub.host_id().to_string(),
                    "map" => change.map.clone(),
                )
                .increment(1);
                map.invalidate(hub, inner.id, &change);
            }
            if change.action == StoredAction::Drop {
                inner.notify(&ManagerChange::Removed {
                    name: change.map.clone(),
                });
            }
        }
        if decoded == 0 {
            // Nothing of it decoded: no transaction to announce.
            start = end;
            continue;
        }
        inner.counters.transactions.fetch_add(1, Ordering::Relaxed);
        let committed = TransactionCommitted {
            sequence,
            operation: operation_id,
            changes: decoded,
        };
        for observer in inner.observers() {
            observer.transaction_committed(&committed);
        }
        start = end;
    }
}

fn skip<B: Backend>(inner: &ManagerInner<B>, position: u64, reason: &str) {
    inner.skipped.fetch_add(1, Ordering::Relaxed);
    tracing::error!(position, %reason, "map change does not decode; skipped");
}

/// The change log has a hole after `position` (trimmed while this host was behind, or
/// deleted): what it held is lost, so every observer is rebuilt, from snapshots at least as
/// new as `rows`, which are skipped.
fn coverage_lost<B: Backend>(inner: &ManagerInner<B>, position: u64, rows: &[StreamRow]) {
    inner
        .counters
        .coverage_losses
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        position,
        next = rows.first().map(|row| row.position),
        "the maps' change log has a hole (trimmed while this host was behind?): every map is rebuilt"
    );
    let maps = inner.maps();
    let names = maps.iter().map(|map| map.name().to_owned()).collect();
    inner.notify(&ManagerChange::Rebuild { names });
    for map in &maps {
        map.reset();
    }
    if let Some(hub) = inner.hub() {
        let clear = |name: &str| StoredChange {
            map: name.to_owned(),
            action: StoredAction::Clear,
            key: None,
            old: None,
            new: None,
        };
        for map in &maps {
            map.invalidate(&hub, inner.id, &clear(map.name()));
        }
    }
}
