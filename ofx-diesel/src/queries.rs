//! The operation log's queries, the same Diesel code for every backend.

/// The query methods of [`Backend`](crate::Backend) (from `read_after` to `trim`), for an
/// `impl Backend` whose `Connection` runs Diesel's async queries on the operation log's tables.
/// Expanded once per backend: Diesel's query types are per backend, so one generic body would
/// need a bound per query.
macro_rules! log_queries {
    () => {
        async fn read_after(
            connection: &mut Self::Connection,
            after: i64,
            limit: i64,
        ) -> Result<Vec<OperationRow>> {
            Ok(dsl::ofx_operations
                .filter(dsl::idx.gt(after))
                .order(dsl::idx.asc())
                .limit(limit)
                .select(OperationRow::as_select())
                .load(connection)
                .await?)
        }

        async fn read_ranges(
            connection: &mut Self::Connection,
            ranges: &[(i64, i64)],
            limit: i64,
        ) -> Result<Vec<OperationRow>> {
            if ranges.is_empty() {
                return Ok(Vec::new());
            }
            // Boxed: one `OR` term per range, however many there are.
            let mut query = dsl::ofx_operations
                .select(OperationRow::as_select())
                .into_boxed();
            for &(from, to) in ranges {
                query = query.or_filter(dsl::idx.ge(from).and(dsl::idx.lt(to)));
            }
            Ok(query
                .order(dsl::idx.asc())
                .limit(limit)
                .load(connection)
                .await?)
        }

        async fn rows_of_transactions(
            connection: &mut Self::Connection,
            through: i64,
            transactions: &[i64],
        ) -> Result<Vec<OperationRow>> {
            Ok(dsl::ofx_operations
                .filter(dsl::idx.le(through))
                .filter(dsl::xid.eq_any(transactions))
                .order(dsl::idx.asc())
                .select(OperationRow::as_select())
                .load(connection)
                .await?)
        }

        async fn rows_at_or_above(
            connection: &mut Self::Connection,
            through: i64,
            horizon: i64,
        ) -> Result<Vec<OperationRow>> {
            Ok(dsl::ofx_operations
                .filter(dsl::idx.le(through))
                .filter(dsl::xid.ge(horizon))
                .order(dsl::idx.asc())
                .select(OperationRow::as_select())
                .load(connection)
                .await?)
        }

        async fn find(connection: &mut Self::Connection, uuid: &str) -> Result<Option<i64>> {
            Ok(dsl::ofx_operations
                .filter(dsl::uuid.eq(uuid))
                .select(dsl::idx)
                .first(connection)
                .await
                .optional()?)
        }

        async fn trimmed_through(connection: &mut Self::Connection) -> Result<i64> {
            Ok(trims::ofx_log_trims
                .select(trims::trimmed_through)
                .first(connection)
                .await?)
        }

        async fn min_index(connection: &mut Self::Connection) -> Result<Option<i64>> {
            Ok(dsl::ofx_operations
                .select(diesel::dsl::min(dsl::idx))
                .first(connection)
                .await?)
        }

        async fn head_index(connection: &mut Self::Connection) -> Result<Option<i64>> {
            Ok(dsl::ofx_operations
                .select(diesel::dsl::max(dsl::idx))
                .first(connection)
                .await?)
        }

        async fn trim(connection: &mut Self::Connection, cutoff: i64, limit: i64) -> Result<usize> {
            // The oldest rows by index, and of them the run that started before the cutoff:
            // what is trimmed is a prefix of the log, found by its primary key alone (no index
            // on `logged_at` to keep up at every commit). A newer row stops the run; the older
            // ones after it wait for the next trim.
            let oldest: Vec<(i64, i64)> = dsl::ofx_operations
                .order(dsl::idx.asc())
                .limit(limit)
                .select((dsl::idx, dsl::logged_at))
                .load(connection)
                .await?;
            let Some(last) = oldest
                .iter()
                .take_while(|(_, logged_at)| *logged_at < cutoff)
                .last()
                .map(|(idx, _)| *idx)
            else {
                return Ok(0);
            };
            diesel::update(trims::ofx_log_trims.filter(trims::trimmed_through.lt(last)))
                .set(trims::trimmed_through.eq(last))
                .execute(connection)
                .await?;
            Ok(
                diesel::delete(dsl::ofx_operations.filter(dsl::idx.le(last)))
                    .execute(connection)
                    .await?,
            )
        }
    };
}

/// The pool methods of [`Backend`](crate::Backend) (`pool`, `get`, `discard`) for a backend whose
/// `Pool` and `Pooled` are diesel-async's deadpool `Pool` and `Object` of its `Connection`,
/// each connection opened with the backend's `connect` and checked out as `$recycling` (a
/// diesel-async `RecyclingMethod`) says.
macro_rules! deadpool_pool {
    ($recycling:expr) => {
        fn pool(url: &str, size: usize) -> Result<Self::Pool> {
            let mut config = ManagerConfig::default();
            config.recycling_method = $recycling;
            config.custom_setup = Box::new(|url| {
                let url = url.to_owned();
                Box::pin(async move { Self::connect(&url).await })
            });
            let manager =
                AsyncDieselConnectionManager::<Self::Connection>::new_with_config(url, config);
            Pool::builder(manager)
                .max_size(size)
                .build()
                .map_err(|error| Error::Connect(error.to_string()))
        }

        async fn get(pool: &Self::Pool) -> Result<Self::Pooled> {
            pool.get()
                .await
                .map_err(|error| Error::Connect(error.to_string()))
        }

        fn discard(connection: Self::Pooled) {
            drop(Object::take(connection));
        }

        fn reused(connection: &Self::Pooled) -> bool {
            Object::metrics(connection).recycle_count > 0
        }
    };
}

/// The event methods of [`Backend`](crate::Backend) that are the same Diesel code on every
/// backend (all but `claim_events`). Expects `ev` to be `crate::schema::ofx_events::dsl`.
macro_rules! event_queries {
    () => {
        async fn insert_event(
            connection: &mut Self::Connection,
            row: NewEventRow<'_>,
            on_conflict: ofx_core::operation::KeyConflict,
        ) -> Result<usize> {
            use ofx_core::operation::KeyConflict;
            let values = (
                ev::uuid.eq(row.uuid),
                ev::operation_uuid.eq(row.operation_uuid),
                ev::host_id.eq(row.host_id),
                ev::command_name.eq(row.command_name),
                ev::command_json.eq(row.command_json),
                ev::event_key.eq(row.event_key),
                ev::logged_at.eq(row.logged_at),
                ev::due_at.eq(row.due_at),
            );
            let insert = diesel::insert_into(ev::ofx_events).values(values);
            Ok(match on_conflict {
                KeyConflict::Keep => insert.on_conflict_do_nothing().execute(connection).await?,
                KeyConflict::Replace => {
                    insert
                        .on_conflict(ev::uuid)
                        .do_update()
                        .set((
                            ev::operation_uuid.eq(row.operation_uuid),
                            ev::host_id.eq(row.host_id),
                            ev::command_json.eq(row.command_json),
                            ev::logged_at.eq(row.logged_at),
                            ev::due_at.eq(row.due_at),
                            ev::state.eq(0),
                            ev::attempts.eq(0),
                            ev::lease_token.eq(ev::lease_token + 1),
                            ev::lease_owner.eq(None::<String>),
                            ev::lease_until.eq(None::<i64>),
                            ev::last_error.eq(None::<String>),
                            ev::finished_at.eq(None::<i64>),
                        ))
                        .execute(connection)
                        .await?
                }
                _ => insert.execute(connection).await?,
            })
        }

        async fn complete_event(
            connection: &mut Self::Connection,
            uuid: &str,
            lease_token: i64,
            now: i64,
        ) -> Result<bool> {
            let updated = diesel::update(
                ev::ofx_events
                    .filter(ev::uuid.eq(uuid))
                    .filter(ev::lease_token.eq(lease_token))
                    .filter(ev::state.eq(0)),
            )
            .set((
                ev::state.eq(1),
                ev::finished_at.eq(Some(now)),
                ev::lease_owner.eq(None::<String>),
                ev::lease_until.eq(None::<i64>),
                ev::last_error.eq(None::<String>),
            ))
            .execute(connection)
            .await?;
            Ok(updated == 1)
        }

        async fn renew_leases(
            connection: &mut Self::Connection,
            host: &str,
            uuids: &[String],
            until: i64,
        ) -> Result<usize> {
            if uuids.is_empty() {
                return Ok(0);
            }
            Ok(diesel::update(
                ev::ofx_events
                    .filter(ev::uuid.eq_any(uuids))
                    .filter(ev::state.eq(0))
                    .filter(ev::lease_owner.eq(host)),
            )
            .set(ev::lease_until.eq(Some(until)))
            .execute(connection)
            .await?)
        }

        async fn release_event(
            connection: &mut Self::Connection,
            release: EventRelease<'_>,
        ) -> Result<bool> {
            let (state, due, finished) = match release.retry_at {
                Some(due) => (0, Some(due), None),
                None => (2, None, Some(release.now)),
            };
            let target = ev::ofx_events
                .filter(ev::uuid.eq(release.uuid))
                .filter(ev::lease_token.eq(release.lease_token))
                .filter(ev::state.eq(0));
            let common = (
                ev::state.eq(state),
                ev::attempts.eq(ev::attempts - i32::from(release.refund)),
                ev::last_error.eq(Some(release.error)),
                ev::lease_owner.eq(None::<String>),
                ev::lease_until.eq(None::<i64>),
                ev::finished_at.eq(finished),
            );
            let updated = match due {
                Some(due) => {
                    diesel::update(target)
                        .set((common, ev::due_at.eq(due)))
                        .execute(connection)
                        .await?
                }
                None => {
                    diesel::update(target)
                        .set(common)
                        .execute(connection)
                        .await?
                }
            };
            Ok(updated == 1)
        }

        async fn unclaim_event(
            connection: &mut Self::Connection,
            uuid: &str,
            lease_token: i64,
        ) -> Result<bool> {
            let updated = diesel::update(
                ev::ofx_events
                    .filter(ev::uuid.eq(uuid))
                    .filter(ev::lease_token.eq(lease_token))
                    .filter(ev::state.eq(0)),
            )
            .set((
                ev::lease_owner.eq(None::<String>),
                ev::lease_until.eq(None::<i64>),
                ev::attempts.eq(ev::attempts - 1),
            ))
            .execute(connection)
            .await?;
            Ok(updated == 1)
        }

        async fn next_event_due(connection: &mut Self::Connection) -> Result<Option<i64>> {
            let unleased: Option<i64> = ev::ofx_events
                .filter(ev::state.eq(0))
                .filter(ev::lease_until.is_null())
                .select(diesel::dsl::min(ev::due_at))
                .first(connection)
                .await?;
            let leased: Option<i64> = ev::ofx_events
                .filter(ev::state.eq(0))
                .filter(ev::lease_until.is_not_null())
                .select(diesel::dsl::min(ev::lease_until))
                .first(connection)
                .await?;
            Ok(match (unleased, leased) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
        }

        async fn list_events(
            connection: &mut Self::Connection,
            state: Option<i32>,
            limit: i64,
        ) -> Result<Vec<EventRow>> {
            let mut query = ev::ofx_events.select(EventRow::as_select()).into_boxed();
            if let Some(state) = state {
                query = query.filter(ev::state.eq(state));
            }
            Ok(query
                .order((ev::due_at.asc(), ev::uuid.asc()))
                .limit(limit)
                .load(connection)
                .await?)
        }

        async fn find_event(
            connection: &mut Self::Connection,
            uuid: &str,
        ) -> Result<Option<EventRow>> {
            Ok(ev::ofx_events
                .filter(ev::uuid.eq(uuid))
                .select(EventRow::as_select())
                .first(connection)
                .await
                .optional()?)
        }

        async fn redrive_events(
            connection: &mut Self::Connection,
            uuid: Option<&str>,
            now: i64,
        ) -> Result<usize> {
            let mut target = diesel::update(ev::ofx_events)
                .filter(ev::state.eq(2))
                .into_boxed();
            if let Some(uuid) = uuid {
                target = target.filter(ev::uuid.eq(uuid));
            }
            Ok(target
                .set((
                    ev::state.eq(0),
                    ev::attempts.eq(0),
                    ev::due_at.eq(now),
                    ev::lease_token.eq(ev::lease_token + 1),
                    ev::lease_owner.eq(None::<String>),
                    ev::lease_until.eq(None::<i64>),
                    ev::finished_at.eq(None::<i64>),
                ))
                .execute(connection)
                .await?)
        }

        async fn purge_events(
            connection: &mut Self::Connection,
            uuid: Option<&str>,
        ) -> Result<usize> {
            let mut target = diesel::delete(ev::ofx_events)
                .filter(ev::state.eq(2))
                .into_boxed();
            if let Some(uuid) = uuid {
                target = target.filter(ev::uuid.eq(uuid));
            }
            Ok(target.execute(connection).await?)
        }

        async fn trim_events(
            connection: &mut Self::Connection,
            done_before: i64,
            dead_before: i64,
            limit: i64,
        ) -> Result<usize> {
            let batch: Vec<String> = ev::ofx_events
                .filter(
                    ev::state
                        .eq(1)
                        .and(ev::finished_at.lt(done_before))
                        .or(ev::state.eq(2).and(ev::finished_at.lt(dead_before))),
                )
                .limit(limit)
                .select(ev::uuid)
                .load(connection)
                .await?;
            if batch.is_empty() {
                return Ok(0);
            }
            Ok(diesel::delete(
                ev::ofx_events
                    .filter(ev::uuid.eq_any(&batch))
                    .filter(ev::state.ne(0)),
            )
            .execute(connection)
            .await?)
        }

        async fn count_events(connection: &mut Self::Connection) -> Result<Vec<(i32, i64)>> {
            Ok(ev::ofx_events
                .group_by(ev::state)
                .select((ev::state, diesel::dsl::count_star()))
                .load(connection)
                .await?)
        }
    };
}

/// The state service's query methods of [`Backend`](crate::Backend) (from `stream_head` to
/// `list_quarantine`), expanded once per backend as [`log_queries`].
macro_rules! stream_queries {
    () => {
        async fn stream_head(connection: &mut Self::Connection, stream: &str) -> Result<i64> {
            use crate::schema::ofx_stream_events::dsl as st;
            let head: Option<i64> = st::ofx_stream_events
                .filter(st::stream.eq(stream))
                .select(diesel::dsl::max(st::position))
                .first(connection)
                .await?;
            Ok(head.unwrap_or(0))
        }

        async fn read_stream(
            connection: &mut Self::Connection,
            stream: &str,
            after: i64,
            through: i64,
            limit: i64,
        ) -> Result<Vec<crate::state::rows::StreamRow>> {
            use crate::schema::ofx_stream_events::dsl as st;
            Ok(st::ofx_stream_events
                .filter(st::stream.eq(stream))
                .filter(st::position.gt(after))
                .filter(st::position.le(through))
                .order(st::position.asc())
                .limit(limit)
                .select(crate::state::rows::StreamRow::as_select())
                .load(connection)
                .await?)
        }

        async fn delete_stream_positions(
            connection: &mut Self::Connection,
            stream: &str,
            positions: &[i64],
        ) -> Result<usize> {
            use crate::schema::ofx_stream_events::dsl as st;
            Ok(diesel::delete(
                st::ofx_stream_events
                    .filter(st::stream.eq(stream))
                    .filter(st::position.eq_any(positions)),
            )
            .execute(connection)
            .await?)
        }

        async fn load_snapshots(
            connection: &mut Self::Connection,
            projection: &str,
        ) -> Result<Vec<crate::state::rows::SnapshotRow>> {
            use crate::schema::ofx_state_snapshots::dsl as sn;
            Ok(sn::ofx_state_snapshots
                .filter(sn::projection.eq(projection))
                .order(sn::saved_at.desc())
                .select(crate::state::rows::SnapshotRow::as_select())
                .load(connection)
                .await?)
        }

        async fn stream_anchor(
            connection: &mut Self::Connection,
            stream: &str,
            position: i64,
        ) -> Result<Option<(String, i64)>> {
            use crate::schema::ofx_stream_events::dsl as st;
            Ok(st::ofx_stream_events
                .filter(st::stream.eq(stream))
                .filter(st::position.eq(position))
                .select((st::operation_uuid, st::appended_at))
                .first(connection)
                .await
                .optional()?)
        }

        async fn save_snapshot(
            connection: &mut Self::Connection,
            row: &crate::state::rows::SnapshotRow,
        ) -> Result<()> {
            use crate::schema::ofx_state_snapshots::dsl as sn;
            diesel::insert_into(sn::ofx_state_snapshots)
                .values(row)
                .on_conflict((sn::projection, sn::version))
                .do_update()
                .set((
                    sn::position.eq(row.position),
                    sn::saved_at.eq(row.saved_at),
                    sn::body.eq(&row.body),
                ))
                .execute(connection)
                .await?;
            Ok(())
        }

        async fn quarantine_stream_event(
            connection: &mut Self::Connection,
            row: &crate::state::rows::QuarantineRow,
        ) -> Result<()> {
            use crate::schema::ofx_state_quarantine::dsl as q;
            diesel::insert_into(q::ofx_state_quarantine)
                .values(row)
                .on_conflict_do_nothing()
                .execute(connection)
                .await?;
            Ok(())
        }

        async fn list_quarantine(
            connection: &mut Self::Connection,
            projection: &str,
            version: i64,
            limit: i64,
        ) -> Result<Vec<crate::state::rows::QuarantineRow>> {
            use crate::schema::ofx_state_quarantine::dsl as q;
            Ok(q::ofx_state_quarantine
                .filter(q::projection.eq(projection))
                .filter(q::version.eq(version))
                .order((q::stream.asc(), q::position.asc()))
                .limit(limit)
                .select(crate::state::rows::QuarantineRow::as_select())
                .load(connection)
                .await?)
        }

        async fn trim_stream(
            connection: &mut Self::Connection,
            stream: &str,
            before: i64,
        ) -> Result<usize> {
            use crate::schema::ofx_stream_events::dsl as st;
            let head = Self::stream_head(connection, stream).await?;
            Ok(diesel::delete(
                st::ofx_stream_events
                    .filter(st::stream.eq(stream))
                    .filter(st::appended_at.lt(before))
                    .filter(st::position.lt(head)),
            )
            .execute(connection)
            .await?)
        }

        async fn map_get(
            connection: &mut Self::Connection,
            map: &str,
            key: &str,
        ) -> Result<Option<String>> {
            use crate::schema::ofx_map_entries::dsl as me;
            Ok(me::ofx_map_entries
                .filter(me::map.eq(map))
                .filter(me::key.eq(key))
                .select(me::value)
                .first(connection)
                .await
                .optional()?)
        }

        async fn map_put(
            connection: &mut Self::Connection,
            map: &str,
            key: &str,
            value: &str,
        ) -> Result<()> {
            use crate::schema::ofx_map_entries::dsl as me;
            diesel::insert_into(me::ofx_map_entries)
                .values((me::map.eq(map), me::key.eq(key), me::value.eq(value)))
                .on_conflict((me::map, me::key))
                .do_update()
                .set(me::value.eq(value))
                .execute(connection)
                .await?;
            Ok(())
        }

        async fn map_delete(
            connection: &mut Self::Connection,
            map: &str,
            key: &str,
        ) -> Result<usize> {
            use crate::schema::ofx_map_entries::dsl as me;
            Ok(diesel::delete(
                me::ofx_map_entries
                    .filter(me::map.eq(map))
                    .filter(me::key.eq(key)),
            )
            .execute(connection)
            .await?)
        }

        async fn map_clear(connection: &mut Self::Connection, map: &str) -> Result<usize> {
            use crate::schema::ofx_map_entries::dsl as me;
            Ok(diesel::delete(me::ofx_map_entries.filter(me::map.eq(map)))
                .execute(connection)
                .await?)
        }

        async fn map_entries(
            connection: &mut Self::Connection,
            map: &str,
            after: Option<&str>,
            limit: i64,
        ) -> Result<Vec<(String, String)>> {
            use crate::schema::ofx_map_entries::dsl as me;
            let mut query = me::ofx_map_entries
                .filter(me::map.eq(map))
                .select((me::key, me::value))
                .into_boxed();
            if let Some(after) = after {
                query = query.filter(me::key.gt(after));
            }
            Ok(query
                .order(me::key.asc())
                .limit(limit)
                .load(connection)
                .await?)
        }

        async fn map_len(connection: &mut Self::Connection, map: &str) -> Result<i64> {
            use crate::schema::ofx_map_entries::dsl as me;
            Ok(me::ofx_map_entries
                .filter(me::map.eq(map))
                .count()
                .get_result(connection)
                .await?)
        }
    };
}

pub(crate) use {deadpool_pool, event_queries, log_queries, stream_queries};
