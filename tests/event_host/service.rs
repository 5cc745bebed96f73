//! The service of the event-host tests, shared by the test (host B) and the child process
//! (`event_host`): a command that produces one event, and the event, whose handler writes an
//! effect row named by the event's uuid and the host that ran it. The effects table has no key:
//! an effect that happened twice shows as two rows.

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use ofx_core::operation::EventDelivery;
use ofx_core::{Command, CommandContext, ComputeService, Hub, command_handler, service};
use ofx_diesel::{Backend, DbHub};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

diesel::table! {
    effects (event_uuid, host) {
        event_uuid -> Text,
        host -> Text,
    }
}

/// The business table (no key, on purpose).
pub(crate) const TABLES: &str =
    "CREATE TABLE effects (event_uuid TEXT NOT NULL, host TEXT NOT NULL)";

/// The lease of every host in these tests: short, so that a host that stopped loses it soon.
pub(crate) const LEASE: std::time::Duration = std::time::Duration::from_secs(2);

/// The effect queries of one backend.
pub(crate) trait EffectQueries: Backend {
    fn insert_effect(
        connection: &mut Self::Connection,
        event: &str,
        host: &str,
    ) -> impl std::future::Future<Output = QueryResult<usize>> + Send;
    fn effects_of(
        connection: &mut Self::Connection,
        event: &str,
    ) -> impl std::future::Future<Output = QueryResult<Vec<String>>> + Send;
}

macro_rules! effect_queries {
    ($backend:ty) => {
        impl EffectQueries for $backend {
            async fn insert_effect(
                connection: &mut Self::Connection,
                event: &str,
                host: &str,
            ) -> QueryResult<usize> {
                diesel::insert_into(effects::table)
                    .values((effects::event_uuid.eq(event), effects::host.eq(host)))
                    .execute(connection)
                    .await
            }

            async fn effects_of(
                connection: &mut Self::Connection,
                event: &str,
            ) -> QueryResult<Vec<String>> {
                effects::table
                    .filter(effects::event_uuid.eq(event))
                    .select(effects::host)
                    .load(connection)
                    .await
            }
        }
    };
}

effect_queries!(ofx_diesel::Sqlite);
effect_queries!(ofx_diesel::Postgres);

/// Produces one `Work` event.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = uuid::Uuid, name = "event_host.produce")]
pub(crate) struct Produce;

/// The event: writes its effect.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "event_host.work", backend)]
pub(crate) struct Work;

/// Tells where a handler is in its run: `mid` (in the middle), `returning` (about to succeed).
pub(crate) type Signal = Arc<dyn Fn(&str, EventDelivery) + Send + Sync>;

/// What the event's handler does on this host.
#[derive(Clone)]
pub(crate) enum Role {
    /// Writes its effect and returns.
    Finish,
    /// Writes its effect, signals, and never returns (until the process is killed).
    HangAfterEffect(Signal),
    /// Signals, waits to be told to go on, then writes its effect, signals again and returns.
    WaitThenEffect(Signal, Arc<Notify>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkError {
    #[error("not run as an event")]
    NotAnEvent,
    #[error(transparent)]
    Db(#[from] ofx_diesel::Error),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error(transparent)]
    Core(#[from] ofx_core::Error),
}

pub(crate) struct Worker<B: Backend> {
    pub(crate) hub: Hub,
    pub(crate) db: DbHub<B>,
    pub(crate) role: Role,
}

impl<B: Backend> ComputeService for Worker<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B: EffectQueries> Worker<B> {
    #[command_handler]
    pub(crate) async fn produce(
        &self,
        _command: Produce,
        ctx: &CommandContext,
    ) -> Result<uuid::Uuid, WorkError> {
        Ok(ctx.add_event(Work)?)
    }

    #[command_handler]
    pub(crate) async fn work(&self, _command: Work, ctx: &CommandContext) -> Result<(), WorkError> {
        let delivery = ctx.event_delivery().ok_or(WorkError::NotAnEvent)?;
        match &self.role {
            Role::Finish => self.effect(ctx, delivery).await?,
            Role::HangAfterEffect(signal) => {
                self.effect(ctx, delivery).await?;
                signal("mid", delivery);
                std::future::pending::<()>().await;
            }
            Role::WaitThenEffect(signal, go) => {
                let go = go.notified();
                signal("mid", delivery);
                go.await;
                self.effect(ctx, delivery).await?;
                signal("returning", delivery);
            }
        }
        Ok(())
    }
}

impl<B: EffectQueries> Worker<B> {
    /// Writes this host's effect of `delivery`'s event, in the run's transaction.
    async fn effect(&self, ctx: &CommandContext, delivery: EventDelivery) -> Result<(), WorkError> {
        let mut connection = self.db.operation_connection(ctx).await?;
        B::insert_effect(
            &mut connection,
            &delivery.event.to_string(),
            &self.hub.host_id().to_string(),
        )
        .await?;
        Ok(())
    }
}
