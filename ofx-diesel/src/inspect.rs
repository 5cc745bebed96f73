//! What operators read of a database (the `ofx` command line): the operation log
//! ([`DbHub::log`] → [`DbLog`]) and what the state services' tables hold
//! ([`DbHub::state_overview`], [`DbHub::quarantine`]). Reads only.

use std::time::SystemTime;

use crate::Result;
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::row::{OperationRow, time};
use queries::InspectQueries as _;

/// An operation as stored in the log: what [`DbLog`] returns. Its JSON columns are `None` when
/// the row is over [`MAX_PAYLOAD_BYTES`](crate::MAX_PAYLOAD_BYTES) (they were not transferred).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoggedOperation {
    /// Its index in the log (the readers' cursor).
    pub index: i64,
    /// The operation's uuid, as stored.
    pub uuid: String,
    /// The host that executed it.
    pub host_id: String,
    /// The command's name.
    pub command_name: String,
    /// When it started.
    pub logged_at: SystemTime,
    /// When it committed.
    pub committed_at: SystemTime,
    /// The command, items and nested JSON together, in bytes.
    pub payload_bytes: i64,
    /// The command, as JSON text.
    pub command_json: Option<String>,
    /// The operation items, as JSON text (an object).
    pub items_json: Option<String>,
    /// The nested operations, as JSON text (an array).
    pub nested_json: Option<String>,
}

impl LoggedOperation {
    /// How many nested operations it records (`None` when its nested JSON is missing or is not
    /// an array).
    pub fn nested_count(&self) -> Option<usize> {
        let nested: serde_json::Value = serde_json::from_str(self.nested_json.as_deref()?).ok()?;
        nested.as_array().map(Vec::len)
    }
}

impl From<OperationRow> for LoggedOperation {
    fn from(row: OperationRow) -> Self {
        Self {
            index: row.idx,
            uuid: row.uuid,
            host_id: row.host_id,
            command_name: row.command_name,
            logged_at: time(row.logged_at),
            committed_at: time(row.committed_at),
            payload_bytes: row.payload_bytes,
            command_json: row.command_json,
            items_json: row.items_json,
            nested_json: row.nested_json,
        }
    }
}

/// A database's operation log, read as an operator would: the newest operations, one by
/// uuid, those after an index. Get it with [`DbHub::log`].
#[derive(Debug, Clone)]
pub struct DbLog<B: Backend> {
    db: DbHub<B>,
}

impl<B: Backend> DbHub<B> {
    /// This database's operation log, for reading (see [`DbLog`]).
    pub fn log(&self) -> DbLog<B> {
        DbLog { db: self.clone() }
    }

    /// What the state services' tables hold: each stream's head, each snapshot's position,
    /// the quarantined events counted by projection and stream.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn state_overview(&self) -> Result<StateOverview> {
        let mut connection = self.connection().await?;
        let streams = B::Inspect::stream_summaries(&mut connection).await?;
        let snapshots = B::Inspect::snapshot_summaries(&mut connection).await?;
        let quarantine = B::Inspect::quarantine_counts(&mut connection).await?;
        Ok(StateOverview {
            streams: streams
                .into_iter()
                .map(|(stream, head, events, last)| StreamInfo {
                    stream,
                    head: head.unwrap_or(0),
                    events: u64::try_from(events).unwrap_or(0),
                    last_appended_at: last.map(time),
                })
                .collect(),
            snapshots: snapshots
                .into_iter()
                .map(|(projection, version, position, saved_at)| SnapshotInfo {
                    projection,
                    version,
                    position,
                    saved_at: time(saved_at),
                })
                .collect(),
            quarantine: quarantine
                .into_iter()
                .map(|(projection, version, stream, count)| QuarantineCount {
                    projection,
                    version,
                    stream,
                    count: u64::try_from(count).unwrap_or(0),
                })
                .collect(),
        })
    }

    /// The quarantined stream events of every projection, newest first, at most `limit`.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn quarantine(&self, limit: usize) -> Result<Vec<QuarantinedEvent>> {
        let mut connection = self.connection().await?;
        let rows = B::Inspect::quarantine_rows(&mut connection, limit_i64(limit)).await?;
        Ok(rows
            .into_iter()
            .map(|row| QuarantinedEvent {
                projection: row.projection,
                version: row.version,
                stream: row.stream,
                position: row.position,
                kind: row.kind,
                reason: row.reason,
                quarantined_at: time(row.quarantined_at),
            })
            .collect())
    }
}

impl<B: Backend> DbLog<B> {
    /// The highest index in the log (`None` when it is empty).
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn head(&self) -> Result<Option<i64>> {
        let mut connection = self.db.connection().await?;
        B::Inspect::max_index(&mut connection).await
    }

    /// The newest `limit` operations, oldest first.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn tail(&self, limit: usize) -> Result<Vec<LoggedOperation>> {
        let mut connection = self.db.connection().await?;
        let mut rows = B::Inspect::newest(&mut connection, limit_i64(limit)).await?;
        rows.reverse();
        Ok(rows.into_iter().map(LoggedOperation::from).collect())
    }

    /// The operations with an index above `after`, in index order, at most `limit`. On
    /// PostgreSQL a row may commit after rows with higher indexes (see
    /// [`LogReader`](crate::LogReader#gaps)): following the log with this alone may miss it.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn after(&self, after: i64, limit: usize) -> Result<Vec<LoggedOperation>> {
        let mut connection = self.db.connection().await?;
        let rows = B::read_after(&mut connection, after, limit_i64(limit)).await?;
        Ok(rows.into_iter().map(LoggedOperation::from).collect())
    }

    /// The operation with this uuid, if the log has it.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn find(&self, uuid: uuid::Uuid) -> Result<Option<LoggedOperation>> {
        let mut connection = self.db.connection().await?;
        Ok(
            B::Inspect::find_operation(&mut connection, &uuid.to_string())
                .await?
                .map(LoggedOperation::from),
        )
    }

    /// How many operations have an index above `after`.
    ///
    /// # Errors
    /// [`Error::Database`](crate::Error::Database) or [`Error::Connect`](crate::Error::Connect).
    pub async fn count_after(&self, after: i64) -> Result<u64> {
        let mut connection = self.db.connection().await?;
        Ok(u64::try_from(B::Inspect::count_after(&mut connection, after).await?).unwrap_or(0))
    }
}

/// What the state services' tables hold (see [`DbHub::state_overview`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StateOverview {
    /// Every stream, by name.
    pub streams: Vec<StreamInfo>,
    /// Every snapshot stored in the database, by projection and version.
    pub snapshots: Vec<SnapshotInfo>,
    /// Quarantined events counted by projection, version and stream.
    pub quarantine: Vec<QuarantineCount>,
}

/// One stream of `ofx_stream_events`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamInfo {
    /// Its name.
    pub stream: String,
    /// Its highest position.
    pub head: i64,
    /// The events it keeps (fewer than its head once trimmed).
    pub events: u64,
    /// When its newest event was appended.
    pub last_appended_at: Option<SystemTime>,
}

/// One snapshot of `ofx_state_snapshots`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The projection's name.
    pub projection: String,
    /// The projection's version.
    pub version: i64,
    /// The stream position the snapshot reflects.
    pub position: i64,
    /// When it was saved.
    pub saved_at: SystemTime,
}

/// How many events a projection quarantined on a stream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuarantineCount {
    /// The projection's name.
    pub projection: String,
    /// The projection's version.
    pub version: i64,
    /// The stream.
    pub stream: String,
    /// How many.
    pub count: u64,
}

/// A quarantined stream event, as stored in `ofx_state_quarantine`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuarantinedEvent {
    /// The projection's name.
    pub projection: String,
    /// The projection's version.
    pub version: i64,
    /// The stream.
    pub stream: String,
    /// The event's position.
    pub position: i64,
    /// `undecodable`, `rejected`, `panicked` or `missing`.
    pub kind: String,
    /// Why it was set aside.
    pub reason: String,
    /// When.
    pub quarantined_at: SystemTime,
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The queries of this module and of [`hosts`](crate::hosts), for every backend: a backend's
/// `Backend::Inspect` (itself), sealed with it.
pub(crate) mod queries {
    use std::future::Future;

    use crate::Result;
    use crate::row::OperationRow;
    use crate::state::rows::QuarantineRow;

    /// Per stream: its name, head, events kept and newest append (µs).
    pub(crate) type StreamSummary = (String, Option<i64>, i64, Option<i64>);

    /// A row of `ofx_hosts`.
    #[derive(Debug, Clone, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
    #[diesel(table_name = crate::schema::ofx_hosts)]
    pub struct HostRow {
        pub host_id: String,
        pub host_name: String,
        pub pid: i64,
        pub started_at: i64,
        pub heartbeat_at: i64,
        pub heartbeat_period: i64,
        pub stopped_at: Option<i64>,
        pub read_cursor: i64,
        pub replayed_through: Option<i64>,
        pub replayed: i64,
    }

    /// The operator's queries (see [`inspect`](crate::inspect) and [`hosts`](crate::hosts)).
    pub trait InspectQueries {
        /// The connection type (the backend's).
        type Conn: Send;

        /// The highest index in the log.
        fn max_index(
            connection: &mut Self::Conn,
        ) -> impl Future<Output = Result<Option<i64>>> + Send;
        /// The newest `limit` rows, newest first.
        fn newest(
            connection: &mut Self::Conn,
            limit: i64,
        ) -> impl Future<Output = Result<Vec<OperationRow>>> + Send;
        /// The row with this uuid.
        fn find_operation(
            connection: &mut Self::Conn,
            uuid: &str,
        ) -> impl Future<Output = Result<Option<OperationRow>>> + Send;
        /// How many rows have an index above `after`.
        fn count_after(
            connection: &mut Self::Conn,
            after: i64,
        ) -> impl Future<Output = Result<i64>> + Send;
        /// Per stream: name, head, events kept, newest append (µs).
        fn stream_summaries(
            connection: &mut Self::Conn,
        ) -> impl Future<Output = Result<Vec<StreamSummary>>> + Send;
        /// Per snapshot: projection, version, position, saved at (µs).
        fn snapshot_summaries(
            connection: &mut Self::Conn,
        ) -> impl Future<Output = Result<Vec<(String, i64, i64, i64)>>> + Send;
        /// Quarantined events per projection, version and stream.
        fn quarantine_counts(
            connection: &mut Self::Conn,
        ) -> impl Future<Output = Result<Vec<(String, i64, String, i64)>>> + Send;
        /// Quarantined events, newest first.
        fn quarantine_rows(
            connection: &mut Self::Conn,
            limit: i64,
        ) -> impl Future<Output = Result<Vec<QuarantineRow>>> + Send;
        /// Inserts or updates a host's row (its `started_at` is kept on update).
        fn upsert_host(
            connection: &mut Self::Conn,
            row: &HostRow,
        ) -> impl Future<Output = Result<()>> + Send;
        /// Sets a host's `stopped_at`.
        fn host_stopped(
            connection: &mut Self::Conn,
            host_id: &str,
            at: i64,
        ) -> impl Future<Output = Result<()>> + Send;
        /// Every host's row, by host id.
        fn list_hosts(
            connection: &mut Self::Conn,
        ) -> impl Future<Output = Result<Vec<HostRow>>> + Send;
        /// Deletes the rows whose heartbeat is before `before` (µs).
        fn delete_hosts_before(
            connection: &mut Self::Conn,
            before: i64,
        ) -> impl Future<Output = Result<usize>> + Send;
    }

    /// Implements [`InspectQueries`] for a backend whose connection runs Diesel's async queries.
    macro_rules! inspect_queries {
        ($backend:ty, $connection:ty) => {
            impl InspectQueries for $backend {
                type Conn = $connection;

                async fn max_index(connection: &mut Self::Conn) -> Result<Option<i64>> {
                    use crate::schema::ofx_operations::dsl;
                    Ok(dsl::ofx_operations
                        .select(diesel::dsl::max(dsl::idx))
                        .first(connection)
                        .await?)
                }

                async fn newest(
                    connection: &mut Self::Conn,
                    limit: i64,
                ) -> Result<Vec<OperationRow>> {
                    use crate::schema::ofx_operations::dsl;
                    Ok(dsl::ofx_operations
                        .order(dsl::idx.desc())
                        .limit(limit)
                        .select(OperationRow::as_select())
                        .load(connection)
                        .await?)
                }

                async fn find_operation(
                    connection: &mut Self::Conn,
                    uuid: &str,
                ) -> Result<Option<OperationRow>> {
                    use crate::schema::ofx_operations::dsl;
                    Ok(dsl::ofx_operations
                        .filter(dsl::uuid.eq(uuid))
                        .select(OperationRow::as_select())
                        .first(connection)
                        .await
                        .optional()?)
                }

                async fn count_after(connection: &mut Self::Conn, after: i64) -> Result<i64> {
                    use crate::schema::ofx_operations::dsl;
                    Ok(dsl::ofx_operations
                        .filter(dsl::idx.gt(after))
                        .count()
                        .get_result(connection)
                        .await?)
                }

                async fn stream_summaries(
                    connection: &mut Self::Conn,
                ) -> Result<Vec<StreamSummary>> {
                    use crate::schema::ofx_stream_events::dsl as st;
                    Ok(st::ofx_stream_events
                        .group_by(st::stream)
                        .select((
                            st::stream,
                            diesel::dsl::max(st::position),
                            diesel::dsl::count(st::position),
                            diesel::dsl::max(st::appended_at),
                        ))
                        .order(st::stream.asc())
                        .load(connection)
                        .await?)
                }

                async fn snapshot_summaries(
                    connection: &mut Self::Conn,
                ) -> Result<Vec<(String, i64, i64, i64)>> {
                    use crate::schema::ofx_state_snapshots::dsl as sn;
                    Ok(sn::ofx_state_snapshots
                        .select((sn::projection, sn::version, sn::position, sn::saved_at))
                        .order((sn::projection.asc(), sn::version.asc()))
                        .load(connection)
                        .await?)
                }

                async fn quarantine_counts(
                    connection: &mut Self::Conn,
                ) -> Result<Vec<(String, i64, String, i64)>> {
                    use crate::schema::ofx_state_quarantine::dsl as q;
                    Ok(q::ofx_state_quarantine
                        .group_by((q::projection, q::version, q::stream))
                        .select((
                            q::projection,
                            q::version,
                            q::stream,
                            diesel::dsl::count(q::position),
                        ))
                        .order((q::projection.asc(), q::version.asc(), q::stream.asc()))
                        .load(connection)
                        .await?)
                }

                async fn quarantine_rows(
                    connection: &mut Self::Conn,
                    limit: i64,
                ) -> Result<Vec<QuarantineRow>> {
                    use crate::schema::ofx_state_quarantine::dsl as q;
                    Ok(q::ofx_state_quarantine
                        .order((q::quarantined_at.desc(), q::position.desc()))
                        .limit(limit)
                        .select(QuarantineRow::as_select())
                        .load(connection)
                        .await?)
                }

                async fn upsert_host(connection: &mut Self::Conn, row: &HostRow) -> Result<()> {
                    use crate::schema::ofx_hosts::dsl as h;
                    diesel::insert_into(h::ofx_hosts)
                        .values(row)
                        .on_conflict(h::host_id)
                        .do_update()
                        .set((
                            h::host_name.eq(&row.host_name),
                            h::pid.eq(row.pid),
                            h::heartbeat_at.eq(row.heartbeat_at),
                            h::heartbeat_period.eq(row.heartbeat_period),
                            h::stopped_at.eq(row.stopped_at),
                            h::read_cursor.eq(row.read_cursor),
                            h::replayed_through.eq(row.replayed_through),
                            h::replayed.eq(row.replayed),
                        ))
                        .execute(connection)
                        .await?;
                    Ok(())
                }

                async fn host_stopped(
                    connection: &mut Self::Conn,
                    host_id: &str,
                    at: i64,
                ) -> Result<()> {
                    use crate::schema::ofx_hosts::dsl as h;
                    diesel::update(h::ofx_hosts.filter(h::host_id.eq(host_id)))
                        .set(h::stopped_at.eq(Some(at)))
                        .execute(connection)
                        .await?;
                    Ok(())
                }

                async fn list_hosts(connection: &mut Self::Conn) -> Result<Vec<HostRow>> {
                    use crate::schema::ofx_hosts::dsl as h;
                    Ok(h::ofx_hosts
                        .order(h::host_id.asc())
                        .select(HostRow::as_select())
                        .load(connection)
                        .await?)
                }

                async fn delete_hosts_before(
                    connection: &mut Self::Conn,
                    before: i64,
                ) -> Result<usize> {
                    use crate::schema::ofx_hosts::dsl as h;
                    Ok(
                        diesel::delete(h::ofx_hosts.filter(h::heartbeat_at.lt(before)))
                            .execute(connection)
                            .await?,
                    )
                }
            }
        };
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    use diesel::prelude::*;
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    use diesel_async::RunQueryDsl;

    #[cfg(feature = "sqlite")]
    inspect_queries!(crate::Sqlite, crate::SqliteAsyncConnection);
    #[cfg(feature = "postgres")]
    inspect_queries!(crate::Postgres, diesel_async::AsyncPgConnection);
}
