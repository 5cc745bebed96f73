//! [`DbEvents`]: list, redrive and purge a database's events.

use std::time::SystemTime;

use super::{EventInfo, EventState};
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::row::micros;
use crate::{Error, Result};

/// How many events are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventCounts {
    /// Waiting or running.
    pub pending: u64,
    /// Done (until trimmed).
    pub done: u64,
    /// Dead (until purged or trimmed).
    pub dead: u64,
}

/// A database's events, for operators: what is pending, what is dead and why; redrive or
/// purge dead events. Get it with [`DbHub::events`].
///
/// ```no_run
/// # async fn example(db: ofx_diesel::DbHub<ofx_diesel::Sqlite>) -> ofx_diesel::Result<()> {
/// use ofx_diesel::EventState;
///
/// for event in db.events().list(Some(EventState::Dead), 100).await? {
///     println!("{} {}: {:?}", event.uuid, event.command_name, event.last_error);
/// }
/// db.events().redrive_dead().await?; // run them all again
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DbEvents<B: Backend> {
    db: DbHub<B>,
}

impl<B: Backend> DbHub<B> {
    /// This database's events (listing, redrive, purge).
    pub fn events(&self) -> DbEvents<B> {
        DbEvents { db: self.clone() }
    }
}

impl<B: Backend> DbEvents<B> {
    /// Events in `state` (every state when `None`), earliest due first, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn list(&self, state: Option<EventState>, limit: usize) -> Result<Vec<EventInfo>> {
        let mut connection = self.db.connection().await?;
        let rows = B::list_events(
            &mut connection,
            state.map(EventState::code),
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
        .await?;
        Ok(rows.into_iter().map(EventInfo::from).collect())
    }

    /// The event with this uuid, if it is stored.
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn get(&self, uuid: uuid::Uuid) -> Result<Option<EventInfo>> {
        let mut connection = self.db.connection().await?;
        Ok(B::find_event(&mut connection, &uuid.to_string())
            .await?
            .map(EventInfo::from))
    }

    /// How many events are in each state.
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn counts(&self) -> Result<EventCounts> {
        let mut connection = self.db.connection().await?;
        let mut counts = EventCounts::default();
        for (state, count) in B::count_events(&mut connection).await? {
            let count = u64::try_from(count).unwrap_or(0);
            match EventState::from_code(state) {
                Some(EventState::Pending) => counts.pending += count,
                Some(EventState::Done) => counts.done += count,
                Some(EventState::Dead) => counts.dead += count,
                None => {}
            }
        }
        Ok(counts)
    }

    /// Makes a dead event pending again, due now, with its attempts reset.
    ///
    /// # Errors
    /// [`Error::NoSuchEvent`] when no dead event has this uuid; [`Error::Database`] or
    /// [`Error::Connect`].
    pub async fn redrive(&self, uuid: uuid::Uuid) -> Result<()> {
        let mut connection = self.db.connection().await?;
        let now = micros(SystemTime::now());
        match B::redrive_events(&mut connection, Some(&uuid.to_string()), now).await? {
            0 => Err(Error::NoSuchEvent(uuid)),
            _ => Ok(()),
        }
    }

    /// Makes every dead event pending again; returns how many.
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn redrive_dead(&self) -> Result<u64> {
        let mut connection = self.db.connection().await?;
        let now = micros(SystemTime::now());
        let count = B::redrive_events(&mut connection, None, now).await?;
        Ok(count as u64)
    }

    /// Deletes a dead event.
    ///
    /// # Errors
    /// [`Error::NoSuchEvent`] when no dead event has this uuid; [`Error::Database`] or
    /// [`Error::Connect`].
    pub async fn purge(&self, uuid: uuid::Uuid) -> Result<()> {
        let mut connection = self.db.connection().await?;
        match B::purge_events(&mut connection, Some(&uuid.to_string())).await? {
            0 => Err(Error::NoSuchEvent(uuid)),
            _ => Ok(()),
        }
    }

    /// Deletes every dead event; returns how many.
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn purge_dead(&self) -> Result<u64> {
        let mut connection = self.db.connection().await?;
        Ok(B::purge_events(&mut connection, None).await? as u64)
    }

    /// Deletes done and dead events older than the settings keep them
    /// ([`EventSettings::done_max_age`](crate::EventSettings),
    /// [`dead_max_age`](crate::EventSettings)), in batches; returns how many. The trimmer calls
    /// it.
    ///
    /// # Errors
    /// [`Error::Database`] or [`Error::Connect`].
    pub async fn trim(&self) -> Result<u64> {
        let settings = self.db.settings();
        let now = SystemTime::now();
        let before = |age| micros(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH));
        let done_before = before(settings.events.done_max_age);
        let dead_before = before(settings.events.dead_max_age);
        let mut total = 0;
        loop {
            let mut connection = self.db.connection().await?;
            let deleted = B::trim_events(
                &mut connection,
                done_before,
                dead_before,
                settings.trim_batch,
            )
            .await?;
            total += deleted as u64;
            if i64::try_from(deleted).unwrap_or(i64::MAX) < settings.trim_batch {
                return Ok(total);
            }
        }
    }
}
