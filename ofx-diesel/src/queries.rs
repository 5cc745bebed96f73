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

        async fn contains(connection: &mut Self::Connection, uuid: &str) -> Result<bool> {
            let found: Option<i64> = dsl::ofx_operations
                .filter(dsl::uuid.eq(uuid))
                .select(dsl::idx)
                .first(connection)
                .await
                .optional()?;
            Ok(found.is_some())
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

        async fn trim(connection: &mut Self::Connection, cutoff: i64, limit: i64) -> Result<usize> {
            let batch: Vec<i64> = dsl::ofx_operations
                .filter(dsl::logged_at.lt(cutoff))
                .order(dsl::idx.asc())
                .limit(limit)
                .select(dsl::idx)
                .load(connection)
                .await?;
            let Some(&last) = batch.last() else {
                return Ok(0);
            };
            diesel::update(trims::ofx_log_trims.filter(trims::trimmed_through.lt(last)))
                .set(trims::trimmed_through.eq(last))
                .execute(connection)
                .await?;
            Ok(diesel::delete(
                dsl::ofx_operations
                    .filter(dsl::idx.le(last))
                    .filter(dsl::logged_at.lt(cutoff)),
            )
            .execute(connection)
            .await?)
        }
    };
}

/// The pool methods of [`Backend`](crate::Backend) (`pool`, `get`, `discard`) for a backend whose
/// `Pool` and `Pooled` are diesel-async's deadpool `Pool` and `Object` of its `Connection`,
/// each connection opened with the backend's `connect`.
macro_rules! deadpool_pool {
    () => {
        fn pool(url: &str, size: usize) -> Result<Self::Pool> {
            let mut config = ManagerConfig::default();
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
    };
}

pub(crate) use {deadpool_pool, log_queries};
