//! An operation the log cannot take fails with a typed error before anything is committed: one
//! whose command does not serialize, and one over the log's size limit.

#![cfg(feature = "sqlite")]

use std::sync::Arc;

use diesel_async::RunQueryDsl;
use ofx_core::{Command, CommandContext, ComputeService, Hub, command_handler, service};
use ofx_diesel::{DbHub, Error, MAX_PAYLOAD_BYTES, Sqlite};
use serde::{Deserialize, Serialize};

use crate::common::{AccountError, RawSql, fast, sqlite_file};

/// Writes an account row. Its command serializes only when `refuse` is false.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "typed_errors.write")]
pub(crate) struct Write {
    text: String,
    #[serde(serialize_with = "refuse_when_true")]
    refuse: bool,
}

fn refuse_when_true<S: serde::Serializer>(refuse: &bool, serializer: S) -> Result<S::Ok, S::Error> {
    if *refuse {
        Err(serde::ser::Error::custom(
            "this command refuses to be serialized",
        ))
    } else {
        serializer.serialize_bool(false)
    }
}

pub(crate) struct Writer {
    hub: Hub,
    db: DbHub<Sqlite>,
}

impl ComputeService for Writer {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Writer {
    #[command_handler]
    pub(crate) async fn write(
        &self,
        _command: Write,
        ctx: &CommandContext,
    ) -> Result<(), AccountError> {
        let mut connection = self.db.operation_connection(ctx).await?;
        diesel::sql_query("INSERT INTO accounts (id, balance) VALUES (1, 1)")
            .execute(&mut *connection)
            .await?;
        Ok(())
    }
}

async fn writer() -> Arc<Writer> {
    let db = DbHub::<Sqlite>::open(&sqlite_file().await, fast())
        .await
        .unwrap();
    let hub = Hub::builder().with(db.clone()).start().await.unwrap();
    let writer = Arc::new(Writer {
        hub: hub.clone(),
        db,
    });
    hub.add_service(&writer).unwrap();
    writer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_does_not_serialize_fails_with_a_typed_error() {
    let writer = writer().await;
    let error = writer
        .hub
        .commander()
        .call(Write {
            text: String::new(),
            refuse: true,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ofx_core::Error::CommandJson { command, .. } if command == "typed_errors.write"),
        "{error:?}"
    );
    assert_eq!(writer.db.count("accounts").await, 0, "rolled back");
    assert_eq!(writer.db.count("ofx_operations").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_over_the_size_limit_fails_with_payload_too_large() {
    let writer = writer().await;
    let error = writer
        .hub
        .commander()
        .call(Write {
            text: "x".repeat(MAX_PAYLOAD_BYTES),
            refuse: false,
        })
        .await
        .unwrap_err();
    match error.scope_error::<Error>() {
        Some(Error::PayloadTooLarge { size, limit, .. }) => {
            assert!(*size > MAX_PAYLOAD_BYTES, "{size}");
            assert_eq!(*limit, MAX_PAYLOAD_BYTES);
        }
        _ => panic!("PayloadTooLarge: {error:?}"),
    }
    assert_eq!(writer.db.count("accounts").await, 0, "rolled back");
    assert_eq!(writer.db.count("ofx_operations").await, 0);
    // Under the limit, the same command commits.
    writer
        .hub
        .commander()
        .call(Write {
            text: "x".repeat(1000),
            refuse: false,
        })
        .await
        .unwrap();
    assert_eq!(writer.db.count("ofx_operations").await, 1);
}
