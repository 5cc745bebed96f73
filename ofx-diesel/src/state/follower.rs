//! The follower: one task per state service and hub that loads the newest snapshot, catches
//! up with the stream (readiness), then follows it, woken by commits, the watcher,
//! `current_state` and a poll.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ofx_core::Hub;
use ofx_core::background::spawn_supervised;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::apply::{Failed, apply_batch};
use super::projection::Projection;
use super::rows::QuarantineRow;
use super::service::{Inner, StateService, lock};
use super::snapshot::{Unusable, decode, encode, to_i64};
use crate::backend::Backend;
use crate::following::Backoff;
use crate::reader::jitter;
use crate::row::micros;
use crate::{Error, Result};

/// Starts the follower of `inner` on `hub`.
pub(crate) fn start<P: Projection, B: Backend>(
    inner: Arc<Inner<P, B>>,
    hub: &Hub,
    wakes: watch::Receiver<u64>,
) {
    let poll = crate::following::poll_period(&inner.db, hub, inner.settings.poll_period);
    let stop = hub.shutdown_token();
    let health = Arc::clone(&inner.health);
    spawn_supervised("ofx-diesel state follower", health, async move {
        follow(&inner, &stop, wakes, poll).await;
        inner
            .published
            .send_modify(|published| published.stopped = true);
    });
}

/// How soon after a failed refresh a `current_state` call may make the follower try again.
const WAKE_RETRY_FLOOR: Duration = Duration::from_millis(100);

async fn follow<P: Projection, B: Backend>(
    inner: &Arc<Inner<P, B>>,
    stop: &CancellationToken,
    mut wakes: watch::Receiver<u64>,
    poll: Duration,
) {
    let mut backoff = Backoff::new(inner.settings.retry_min, inner.settings.retry_max);
    // Readiness: the newest valid snapshot, then the stream up to its head.
    loop {
        let attempt = async {
            load_snapshot(inner).await?;
            refresh(inner).await
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(()) => break,
            Err(error) => {
                record_error(inner, error, "the initial load failed; retrying");
                let delay = backoff.step();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    backoff.reset();
    inner
        .published
        .send_modify(|published| published.ready = true);
    inner.invalidate_readers();
    super::telemetry::record(inner, 0);
    tracing::info!(
        projection = P::NAME,
        position = inner.published.borrow().position,
        "state service ready"
    );
    let mut last_save: Option<(Instant, u64)> = None;
    if let Some(loaded) = lock(&inner.status).loaded_snapshot {
        last_save = Some((Instant::now(), loaded));
    }
    maybe_save(inner, &mut last_save, true);
    let mut wakes_open = true;
    let mut retry = false;
    loop {
        if !retry {
            tokio::select! {
                () = stop.cancelled() => return,
                () = inner.wake.notified() => {}
                changed = wakes.changed(), if wakes_open => wakes_open = changed.is_ok(),
                () = tokio::time::sleep(jitter(poll, 0.1)) => {}
            }
        }
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = refresh(inner) => outcome,
        };
        match outcome {
            Ok(()) => {
                retry = false;
                backoff.reset();
                maybe_save(inner, &mut last_save, false);
            }
            Err(error) => {
                record_error(inner, error, "refreshing the state failed; retrying");
                retry = true;
                let delay = backoff.step();
                // A `current_state` call cuts the backoff short (at most one retry per
                // `WAKE_RETRY_FLOOR`): the database may be back, and the caller waits.
                let floor = WAKE_RETRY_FLOOR.min(delay);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                    () = async {
                        tokio::time::sleep(floor).await;
                        inner.wake.notified().await;
                    } => {}
                }
            }
        }
    }
}

fn record_error<P: Projection, B: Backend>(inner: &Inner<P, B>, error: Error, what: &str) {
    tracing::warn!(projection = P::NAME, %error, "{what}");
    lock(&inner.status).last_error = Some(Arc::new(error));
}

/// Loads the newest usable snapshot into the published state (before readiness).
async fn load_snapshot<P: Projection, B: Backend>(inner: &Inner<P, B>) -> Result<()> {
    let Some(store) = &inner.snapshots else {
        return Ok(());
    };
    if inner.published.borrow().position > 0 {
        return Ok(()); // loaded by an earlier attempt
    }
    let timeout = inner.settings.refresh_timeout;
    let candidates = tokio::time::timeout(timeout, store.load(P::NAME, P::VERSION))
        .await
        .map_err(|_| Error::RefreshTimeout(timeout))??;
    for candidate in candidates {
        let bytes = candidate.bytes;
        let decoded =
            tokio::task::spawn_blocking(move || decode::<P::State>(P::NAME, P::VERSION, &bytes))
                .await;
        let decoded = match decoded {
            Ok(Ok(decoded)) => decoded,
            Ok(Err(unusable)) => {
                warn_unusable::<P>(&candidate.source, &unusable);
                continue;
            }
            Err(error) => {
                tracing::warn!(projection = P::NAME, %error, "decoding a snapshot failed");
                continue;
            }
        };
        let position = decoded.position;
        // The stream must still have, at the snapshot's position, the event the state was last
        // applied: a snapshot ahead of the stream, or of a stream rolled back, reset or of
        // another database, is not this stream's state.
        if let Some(anchor) = &decoded.anchor {
            let found = stream_anchor(inner, position).await?;
            if found.as_ref() != Some(&(anchor.operation_uuid.clone(), anchor.appended_at)) {
                tracing::warn!(
                    projection = P::NAME,
                    source = %candidate.source,
                    position,
                    "snapshot ignored: the stream does not have its last event at its position (rolled back, reset, or another database's?); rebuilding from the stream"
                );
                continue;
            }
        }
        inner.published.send_modify(|published| {
            published.state = Arc::new(decoded.state);
            published.position = position;
            published.anchor = decoded.anchor;
        });
        lock(&inner.status).loaded_snapshot = Some(position);
        tracing::info!(projection = P::NAME, source = %candidate.source, position, "snapshot loaded");
        return Ok(());
    }
    Ok(())
}

/// The identity of the event at `position`, on a connection of its own, bounded by the
/// refresh timeout.
async fn stream_anchor<P: Projection, B: Backend>(
    inner: &Inner<P, B>,
    position: u64,
) -> Result<Option<(String, i64)>> {
    let timeout = inner.settings.refresh_timeout;
    let mut connection = tokio::time::timeout(timeout, B::get(&inner.db.inner.pool))
        .await
        .map_err(|_| Error::RefreshTimeout(timeout))??;
    match tokio::time::timeout(
        timeout,
        B::stream_anchor(&mut connection, P::STREAM, to_i64(position)),
    )
    .await
    {
        Ok(found) => found,
        Err(_) => {
            // The query may still be running: the connection cannot be reused.
            B::discard(connection);
            Err(Error::RefreshTimeout(timeout))
        }
    }
}

fn warn_unusable<P: Projection>(source: &str, unusable: &Unusable) {
    tracing::warn!(
        projection = P::NAME,
        version = P::VERSION,
        %source,
        reason = %unusable,
        "snapshot ignored; the state is rebuilt from the stream"
    );
}

/// Reads the stream after the published position until a short batch, publishing per batch.
async fn refresh<P: Projection, B: Backend>(inner: &Inner<P, B>) -> Result<()> {
    let epoch = inner.refresh_started.fetch_add(1, Ordering::SeqCst) + 1;
    let started = Instant::now();
    let batch = inner.settings.read_batch.max(1);
    let timeout = inner.settings.refresh_timeout;
    // The checkout is bounded too: PostgreSQL's pool runs a test query on the connection it
    // hands out (or opens a new one), which a stalled server never answers.
    let mut connection = match tokio::time::timeout(timeout, B::get(&inner.db.inner.pool)).await {
        Ok(connection) => connection?,
        Err(_) => return Err(Error::RefreshTimeout(timeout)),
    };
    loop {
        let (base, position) = {
            let published = inner.published.borrow();
            (Arc::clone(&published.state), published.position)
        };
        let read = B::read_stream(
            &mut connection,
            P::STREAM,
            to_i64(position),
            i64::MAX,
            batch,
        );
        let rows = match tokio::time::timeout(timeout, read).await {
            Ok(rows) => rows?,
            Err(_) => {
                // The query may still be running: the connection cannot be reused.
                B::discard(connection);
                return Err(Error::RefreshTimeout(timeout));
            }
        };
        let full = rows.len() as i64 >= batch;
        if let Some(last) = rows.last() {
            // Known to be behind while the batch is applied (`apply` may be slow).
            let mut status = lock(&inner.status);
            status.head = status.head.max(u64::try_from(last.position).unwrap_or(0));
            status.caught_up = false;
        }
        if !rows.is_empty() {
            let applied = apply_batch(&inner.projection, &base, position, &rows);
            let count = super::telemetry::applied(rows.len(), &applied.failed);
            let new_position = applied.position;
            {
                // The status lock first, then the state (as readers take them): a reader sees
                // the new position with the status that goes with it.
                let mut status = lock(&inner.status);
                inner.published.send_modify(|published| {
                    published.state = Arc::new(applied.state);
                    published.position = new_position;
                    published.anchor = applied.anchor;
                });
                status.head = status.head.max(new_position);
                status.replaying = full;
                status.caught_up = false;
            }
            inner.invalidate_readers();
            persist_failed(inner, &applied.failed);
            StateService::record_failed(inner, applied.failed);
            super::telemetry::record(inner, count);
        }
        if !full {
            break;
        }
        // A backlog: learn how far the head is, for the status.
        if let Ok(Ok(head)) =
            tokio::time::timeout(timeout, B::stream_head(&mut connection, P::STREAM)).await
        {
            let mut status = lock(&inner.status);
            status.head = status.head.max(u64::try_from(head).unwrap_or(0));
        }
    }
    {
        let mut status = lock(&inner.status);
        status.caught_up_at = Some(started);
        status.last_refresh = Some(Instant::now());
        status.last_error = None;
        status.caught_up = true;
        status.replaying = false;
        inner
            .published
            .send_modify(|published| published.refreshed = published.refreshed.max(epoch));
    }
    super::telemetry::record(inner, 0);
    Ok(())
}

/// Records quarantined events in the table, in the background (on a connection of its own:
/// a slow or failing insert never holds the follower); a failure is logged (they stay counted
/// and in memory, and other hosts applying them record them too).
fn persist_failed<P: Projection, B: Backend>(inner: &Inner<P, B>, failed: &[Failed]) {
    if failed.is_empty() {
        return;
    }
    let now = micros(SystemTime::now());
    let rows: Vec<QuarantineRow> = failed
        .iter()
        .map(|failed| QuarantineRow {
            projection: P::NAME.to_owned(),
            version: i64::from(P::VERSION),
            stream: P::STREAM.to_owned(),
            position: to_i64(failed.position),
            kind: failed.reason.kind().to_owned(),
            reason: failed.reason.message(),
            quarantined_at: now,
        })
        .collect();
    let pool = inner.db.inner.pool.clone();
    let timeout = inner.settings.refresh_timeout;
    tokio::spawn(async move {
        let record = async {
            let mut connection = B::get(&pool).await?;
            for row in &rows {
                B::quarantine_stream_event(&mut connection, row).await?;
            }
            Ok::<_, Error>(())
        };
        let outcome = tokio::time::timeout(timeout, record)
            .await
            .unwrap_or(Err(Error::RefreshTimeout(timeout)));
        if let Err(error) = outcome {
            tracing::warn!(projection = P::NAME, %error, "recording quarantined events failed");
        }
    });
}

/// Saves a snapshot in the background when it is due: after readiness (`first`), then every
/// `snapshot_every` events, at most every `snapshot_period`.
fn maybe_save<P: Projection, B: Backend>(
    inner: &Arc<Inner<P, B>>,
    last_save: &mut Option<(Instant, u64)>,
    first: bool,
) {
    if inner.snapshots.is_none() {
        return;
    }
    let position = inner.published.borrow().position;
    let due = match *last_save {
        None => first || position > 0,
        Some((at, saved)) => {
            position >= saved.saturating_add(inner.settings.snapshot_every.max(1))
                && at.elapsed() >= inner.settings.snapshot_period
        }
    };
    if !due || position == 0 || inner.saving.swap(true, Ordering::AcqRel) {
        return;
    }
    *last_save = Some((Instant::now(), position));
    let inner = Arc::clone(inner);
    tokio::spawn(async move {
        if let Err(error) = save_snapshot(&inner).await {
            tracing::warn!(projection = P::NAME, %error, "saving a snapshot failed");
        }
        inner.saving.store(false, Ordering::Release);
    });
}

/// Saves a snapshot of the published state (see `StateService::save_snapshot`).
pub(crate) async fn save_snapshot<P: Projection, B: Backend>(
    inner: &Inner<P, B>,
) -> Result<Option<u64>> {
    let Some(store) = &inner.snapshots else {
        return Ok(None);
    };
    let _saving = inner.save_lock.lock().await;
    let (state, position, anchor) = {
        let published = inner.published.borrow();
        if !published.ready {
            return Ok(None);
        }
        (
            Arc::clone(&published.state),
            published.position,
            published.anchor.clone(),
        )
    };
    if let Some(saved) = lock(&inner.status).saved_snapshot
        && saved >= position
    {
        return Ok(Some(saved));
    }
    let bytes =
        tokio::task::spawn_blocking(move || encode(P::NAME, P::VERSION, position, anchor, &*state))
            .await
            .map_err(|error| Error::Snapshot(format!("encoding failed: {error}")))??;
    store.save(P::NAME, P::VERSION, position, bytes).await?;
    lock(&inner.status).saved_snapshot = Some(position);
    tracing::debug!(projection = P::NAME, position, "snapshot saved");
    Ok(Some(position))
}
