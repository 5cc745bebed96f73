//! The same attacks on PostgreSQL (a real server at 127.0.0.1:5432, or `OFX_TEST_POSTGRES`):
//! hints and rows racing across connections.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use ofx_diesel::{DbHub, LogReader, Postgres};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::kit::{Mode, Receiving, Sending, Started, settings, stat};

diesel::table! {
    pg_accounts (id) {
        id -> BigInt,
        balance -> BigInt,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = i64, name = "hints_hostile.pg_deposit")]
pub struct PgDep {
    pub id: i64,
    pub amount: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
}

pub struct PgAccounts {
    pub hub: Hub,
    pub db: DbHub<Postgres>,
}

impl ComputeService for PgAccounts {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

async fn read(connection: &mut AsyncPgConnection, id: i64) -> QueryResult<i64> {
    Ok(pg_accounts::table
        .find(id)
        .select(pg_accounts::balance)
        .first(connection)
        .await
        .optional()?
        .unwrap_or(0))
}

#[service]
impl PgAccounts {
    #[compute_method]
    pub async fn balance(&self, id: i64) -> Result<i64, String> {
        let mut connection = self.db.connection().await.map_err(|e| e.to_string())?;
        read(&mut connection, id).await.map_err(|e| e.to_string())
    }

    #[command_handler]
    pub async fn deposit(&self, command: PgDep, ctx: &CommandContext) -> Result<i64, PgError> {
        invalidate! {
            self.balance(command.id);
        }
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::insert_into(pg_accounts::table)
            .values((
                pg_accounts::id.eq(command.id),
                pg_accounts::balance.eq(command.amount),
            ))
            .on_conflict(pg_accounts::id)
            .do_update()
            .set(pg_accounts::balance.eq(pg_accounts::balance + command.amount))
            .execute(&mut connection)
            .await?;
        Ok(read(&mut connection, command.id).await?)
    }
}

struct PgHost {
    hub: Hub,
    db: DbHub<Postgres>,
    accounts: Arc<PgAccounts>,
    seen: Arc<crate::kit::Seen>,
    reader: Option<LogReader>,
}

struct CountingListener(Arc<crate::kit::Seen>);

impl ofx_core::operation::CompletionListener for CountingListener {
    fn on_operation_completed(&self, operation: &ofx_core::Operation, _local: bool) {
        *self
            .0
            .by_uuid
            .lock()
            .unwrap()
            .entry(operation.uuid)
            .or_insert(0) += 1;
        self.0.changed.notify_waiters();
    }
}

async fn open(
    url: &str,
    read: bool,
    fast_poll: bool,
    watcher: Arc<dyn ofx_core::LogWatcher>,
) -> PgHost {
    let mut s = settings();
    s.read_log = read;
    s.events.process = false;
    s.trim = false;
    s.pool_size = 6;
    if fast_poll {
        s.poll_period = Duration::from_millis(1);
        s.poll_period_with_watcher = Duration::from_millis(1);
    }
    let db = DbHub::<Postgres>::open(url, s).await.unwrap();
    db.set_watcher(Started(watcher)).unwrap();
    let seen = Arc::new(crate::kit::Seen::default());
    let hub = Hub::builder()
        .completion_listener(CountingListener(Arc::clone(&seen)))
        .with(db.clone())
        .start()
        .await
        .unwrap();
    let accounts = Arc::new(PgAccounts {
        hub: hub.clone(),
        db: db.clone(),
    });
    hub.add_service(&accounts).unwrap();
    let reader = db.log_reader(&hub);
    PgHost {
        hub,
        db,
        accounts,
        seen,
        reader,
    }
}

async fn database() -> String {
    let server = std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| panic!("cannot reach PostgreSQL at {server}: {error}"));
    let name = format!(
        "ofx_test_{}_{}",
        std::process::id(),
        Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{server}/{name}");
    let db = DbHub::<Postgres>::open(&url, settings()).await.unwrap();
    db.connection()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE pg_accounts (id BIGINT PRIMARY KEY NOT NULL, balance BIGINT NOT NULL)",
        )
        .await
        .unwrap();
    url
}

/// Three writer tasks on A, each hint pushed from the committing task and from an OS thread,
/// B polling every millisecond and recomputing all the while: each operation completes once on
/// B, and B's values match the database at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_hints_and_rows_racing_complete_each_operation_once_and_leave_no_stale_value() {
    let url = database().await;
    let on_b = Arc::new(Receiving::default());
    let on_a = Sending::new(Arc::clone(&on_b), Mode::Threads);
    let a = Arc::new(open(&url, false, false, on_a.clone()).await);
    let b = Arc::new(open(&url, true, true, on_b.clone()).await);
    b.reader.as_ref().unwrap().wait_for(0).await;
    const IDS: i64 = 3;
    let stop = tokio_util::sync::CancellationToken::new();
    let reading = {
        let b = Arc::clone(&b);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                let _ = b.accounts.balance(i % IDS).await;
                i += 1;
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    for t in 0..3 {
        let a = Arc::clone(&a);
        writers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..50 {
                let executed = a
                    .hub
                    .commander()
                    .call_committed(PgDep {
                        id: (i + t) % IDS,
                        amount: 1,
                    })
                    .await
                    .unwrap();
                done.push((
                    executed.operation,
                    executed.committed.unwrap().sequence.unwrap(),
                ));
            }
            done
        }));
    }
    let mut all = Vec::new();
    for writer in writers {
        all.extend(writer.await.unwrap());
    }
    on_a.join_threads();
    let last = all.iter().map(|(_, s)| *s).max().unwrap();
    b.reader
        .as_ref()
        .unwrap()
        .wait_replayed(last, Duration::from_secs(30))
        .await
        .unwrap();
    stop.cancel();
    reading.await.unwrap();
    let seen = b.seen.all();
    let wrong: Vec<_> = all
        .iter()
        .filter(|(uuid, _)| seen.get(uuid).copied().unwrap_or(0) != 1)
        .map(|(uuid, s)| (s, seen.get(uuid).copied().unwrap_or(0)))
        .collect();
    assert!(
        wrong.is_empty(),
        "(sequence, completions) not once: {wrong:?}"
    );
    for id in 0..IDS {
        let cached = b.accounts.balance(id).await.unwrap();
        let mut connection = a.db.connection().await.unwrap();
        let truth = read(&mut connection, id).await.unwrap();
        assert_eq!(cached, truth, "STALE value on B for account {id}");
    }
    let s = b.reader.as_ref().unwrap().stats();
    let counts = (
        stat(&s.replayed),
        stat(&s.hinted),
        stat(&s.known),
        all.len(),
    );
    assert_eq!(
        counts.0,
        all.len() as u64,
        "ReaderStats::replayed counts an operation twice: (replayed, hinted, known, committed) = {counts:?}"
    );
}
