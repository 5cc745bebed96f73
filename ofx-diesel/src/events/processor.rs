//! [`EventProcessor`]: claims due events under a lease and runs each as its own operation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ofx_core::background::{TaskHealth, spawn_supervised};
use ofx_core::{CallOptions, Hub, WeakHub};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::rows::{ClaimedEvent, EventRelease};
use super::store::EventClaim;
use crate::backend::Backend;
use crate::db_hub::DbHub;
use crate::reader::jitter;
use crate::row::{MAX_PAYLOAD_BYTES, micros};
use crate::telemetry;
use crate::{Error, Result};

/// How long an event that cannot run on this host (no service handles it here yet) waits.
const NOT_HERE_DELAY: Duration = Duration::from_secs(1);

/// The shortest and longest wait after a failed claim.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// Runs (from their start to their commit) taking less than this on average are short: the processor then
/// claims a batch ahead while its slots are busy (see [`Processor::run`]).
const SHORT_RUN: Duration = Duration::from_millis(100);

/// What an [`EventProcessor`] did so far.
#[derive(Debug, Default)]
pub struct EventStats {
    claimed: AtomicU64,
    completed: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    fenced: AtomicU64,
    in_doubt: AtomicU64,
    claim_failures: AtomicU64,
    release_failures: AtomicU64,
    given_back: AtomicU64,
    changed: Notify,
    /// The hub's host id: the `host` label of the processor's metrics.
    host: String,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> u64 {
                self.$name.load(Ordering::Relaxed)
            }
        )*
    };
}

impl EventStats {
    counters! {
        /// Events claimed (a run started).
        claimed,
        /// Runs that committed (the event is done).
        completed,
        /// Failed runs after which the event is due again.
        retried,
        /// Events this processor declared dead (failed runs, and rows that cannot run).
        dead,
        /// Runs whose commit was refused because the claim was no longer the event's (its
        /// lease ended, or it was taken over or replaced).
        fenced,
        /// Runs whose commit stayed in doubt: the event is left to its lease (done if it
        /// committed, claimed again after the lease if not).
        in_doubt,
        /// Claims that failed (the database unreachable); retried with backoff.
        claim_failures,
        /// Failed runs that could not be given back (the event is claimed again after its lease).
        release_failures,
        /// Events claimed ahead but given back unrun: the processor stopped, or they waited for
        /// a slot longer than half their lease.
        given_back,
    }

    fn add(&self, counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
        self.changed.notify_waiters();
        let metric = [
            (&self.claimed, telemetry::EVENTS_CLAIMED),
            (&self.completed, telemetry::EVENTS_COMPLETED),
            (&self.retried, telemetry::EVENTS_RETRIED),
            (&self.dead, telemetry::EVENTS_DEAD),
            (&self.fenced, telemetry::EVENTS_FENCED),
            (&self.in_doubt, telemetry::EVENTS_IN_DOUBT),
        ]
        .into_iter()
        .find(|(cell, _)| std::ptr::eq(*cell, counter));
        if let Some((_, name)) = metric {
            metrics::counter!(name, "host" => self.host.clone()).increment(count);
        }
    }
}

/// A running event processor (see [`events`](crate::events)): started for each hub the
/// database attaches to (unless [`EventSettings::process`](crate::EventSettings) is off), or
/// with [`DbHub::start_event_processor`]. A cheap handle; the processor stops with its hub, or
/// with [`stop`](Self::stop).
#[derive(Debug, Clone)]
pub struct EventProcessor {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    stats: EventStats,
    health: Arc<TaskHealth>,
    stop: CancellationToken,
    wake: Arc<Notify>,
    /// The events being run here: uuid → fencing number.
    running: Mutex<HashMap<String, i64>>,
    /// The recent runs' mean duration in µs (a moving average).
    run_micros: AtomicU64,
}

impl Shared {
    /// Whether the recent runs were short (see [`SHORT_RUN`]).
    fn runs_are_short(&self) -> bool {
        u128::from(self.run_micros.load(Ordering::Relaxed)) < SHORT_RUN.as_micros()
    }

    /// Counts a run of `took` into the moving average (weight 1/8).
    fn ran(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let average = self.run_micros.load(Ordering::Relaxed);
        let updated = average - average / 8 + took / 8;
        self.run_micros.store(updated, Ordering::Relaxed);
    }
}

impl EventProcessor {
    /// What it did so far.
    pub fn stats(&self) -> &EventStats {
        &self.shared.stats
    }

    /// Whether its task runs, stopped, or ended unexpectedly (logged at error level).
    pub fn health(&self) -> &Arc<TaskHealth> {
        &self.shared.health
    }

    /// Makes it look for due events now.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Stops it: no new claims; the runs in progress finish.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Whether it was stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// Events being run here now.
    pub fn running(&self) -> usize {
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits until `condition` holds for the stats, at most `timeout`; returns whether it held.
    pub async fn wait_until(
        &self,
        condition: impl Fn(&EventStats) -> bool,
        timeout: Duration,
    ) -> bool {
        let stats = &self.shared.stats;
        tokio::time::timeout(timeout, async {
            loop {
                let changed = stats.changed.notified();
                if condition(stats) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .is_ok()
    }

    fn running_uuids(&self) -> Vec<String> {
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

impl<B: Backend> DbHub<B> {
    /// Starts this database's event processor on `hub` (what attaching does, unless
    /// [`EventSettings::process`](crate::EventSettings) is off), or returns the one running.
    ///
    /// # Errors
    /// [`Error::NotAttached`] when the database is not attached to `hub`.
    pub fn start_event_processor(&self, hub: &Hub) -> Result<EventProcessor> {
        let Some(link) = self.existing_link(hub) else {
            return Err(Error::NotAttached);
        };
        if let Some(processor) = link.processor().filter(|p| !p.is_stopped()) {
            return Ok(processor);
        }
        let processor = EventProcessor {
            shared: Arc::new(Shared {
                stats: EventStats {
                    host: hub.host_id().to_string(),
                    ..EventStats::default()
                },
                health: TaskHealth::new(),
                stop: hub.shutdown_token(),
                wake: link.events_wake(),
                running: Mutex::new(HashMap::new()),
                run_micros: AtomicU64::new(0),
            }),
        };
        let run = Processor {
            db: self.clone(),
            hub: hub.downgrade(),
            host: hub.host_id().to_string(),
            processor: processor.clone(),
            watched: link.watcher().is_some(),
        };
        spawn_supervised(
            "ofx-diesel event processor",
            Arc::clone(&processor.shared.health),
            run.run(),
        );
        link.set_processor(processor.clone());
        Ok(processor)
    }

    /// This database's event processor on `hub`, if one was started.
    pub fn event_processor(&self, hub: &Hub) -> Option<EventProcessor> {
        self.existing_link(hub)?.processor()
    }
}

struct Processor<B: Backend> {
    db: DbHub<B>,
    hub: WeakHub,
    host: String,
    processor: EventProcessor,
    watched: bool,
}

impl<B: Backend> Processor<B> {
    fn shared(&self) -> &Shared {
        &self.processor.shared
    }

    /// Claims events and runs each on a free slot (at most `concurrency` at once).
    ///
    /// While runs are short (under [`SHORT_RUN`] on average), it claims a batch of
    /// `concurrency` events as soon as the ones claimed before have all started, so that a
    /// backlog is claimed by one statement per batch rather than one per freed slot; the
    /// batch's events wait here for a slot (not for longer than half their lease: then they are
    /// given back). While runs are long, it claims only for the slots free, so that events do
    /// not wait behind long runs here while another host could run them.
    async fn run(self) {
        let settings = self.db.settings().events.clone();
        let concurrency = settings.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let stop = self.shared().stop.clone();
        tokio::spawn(heartbeat(
            self.db.clone(),
            self.host.clone(),
            self.processor.clone(),
        ));
        // Claimed, waiting for a slot, with when they were claimed.
        let mut queue: VecDeque<(ClaimedEvent, Instant)> = VecDeque::new();
        // Free slots taken for the events of the next claim.
        let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
        // Whether the last claim was full: more may be due now.
        let mut more_due = true;
        let mut backoff = BACKOFF.0;
        loop {
            if stop.is_cancelled() {
                break;
            }
            if queue.is_empty() {
                if !more_due {
                    permits.clear();
                    let pause = self.pause().await;
                    tokio::select! {
                        biased; // stopped: no new claim, even when a slot or a wake-up is ready too
                        () = stop.cancelled() => break,
                        () = self.shared().wake.notified() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                let ahead = self.shared().runs_are_short();
                if !ahead {
                    // For the free slots only: at least one, then as many as are free.
                    if permits.is_empty() {
                        tokio::select! {
                            biased; // stopped: no new claim, even when a slot or a wake-up is ready too
                            () = stop.cancelled() => break,
                            permit = Arc::clone(&slots).acquire_owned() => match permit {
                                Ok(permit) => permits.push(permit),
                                Err(_) => break, // never closed
                            },
                        }
                    }
                    while permits.len() < concurrency {
                        match Arc::clone(&slots).try_acquire_owned() {
                            Ok(permit) => permits.push(permit),
                            Err(_) => break,
                        }
                    }
                }
                let wanted = if ahead { concurrency } else { permits.len() };
                match self.claim(wanted, settings.lease).await {
                    Ok(events) => {
                        backoff = BACKOFF.0;
                        more_due = events.len() == wanted;
                        let claimed_at = Instant::now();
                        queue.extend(events.into_iter().map(|event| (event, claimed_at)));
                    }
                    Err(error) => {
                        permits.clear();
                        self.shared()
                            .stats
                            .add(&self.shared().stats.claim_failures, 1);
                        tracing::warn!(%error, backend = B::NAME, "claiming events failed; retrying");
                        let pause = jitter(backoff, 0.25);
                        backoff = (backoff * 2).min(BACKOFF.1);
                        tokio::select! {
                            biased; // stopped: no new claim, even when a slot or a wake-up is ready too
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(pause) => continue,
                        }
                    }
                }
                continue;
            }
            // The next claimed event, on a free slot.
            let permit = match permits.pop() {
                Some(permit) => permit,
                None => tokio::select! {
                    biased; // stopped: no new claim, even when a slot or a wake-up is ready too
                    () = stop.cancelled() => break,
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // never closed
                    },
                },
            };
            let Some((event, claimed_at)) = queue.pop_front() else {
                continue;
            };
            if claimed_at.elapsed() > settings.lease / 2 {
                // It waited here too long (runs got slow): another host may run it sooner, and
                // its lease may end before its run would commit.
                self.give_back(vec![event]).await;
                continue;
            }
            let Some(hub) = self.hub.upgrade() else {
                stop.cancel(); // the hub is gone
                queue.push_front((event, claimed_at));
                break;
            };
            self.spawn_run(&hub, event, permit);
        }
        // Stopped: the events claimed ahead are given back for another host to run now.
        self.give_back(queue.into_iter().map(|(event, _)| event).collect())
            .await;
    }

    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<ClaimedEvent>> {
        let now = self.db.now();
        let mut connection = self.db.connection().await?;
        B::claim_events(
            &mut connection,
            &self.host,
            micros(now),
            micros(now + lease),
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
        .await
    }

    /// Gives back events claimed but not run.
    async fn give_back(&self, events: Vec<ClaimedEvent>) {
        if events.is_empty() {
            return;
        }
        let count = events.len();
        let given = async {
            let mut connection = self.db.connection().await?;
            let mut given = 0;
            for event in &events {
                if B::unclaim_event(&mut connection, &event.uuid, event.lease_token).await? {
                    given += 1;
                }
            }
            Ok::<_, Error>(given)
        };
        match given.await {
            Ok(given) => self
                .shared()
                .stats
                .add(&self.shared().stats.given_back, given),
            Err(error) => {
                tracing::warn!(%error, count, "giving back claimed events failed; they are claimed again after their lease");
            }
        }
    }

    /// Until the next poll: the poll period (jittered), or the next due time if sooner.
    async fn pause(&self) -> Duration {
        let settings = self.db.settings();
        let period = jitter(
            if self.watched {
                settings.poll_period_with_watcher
            } else {
                settings.poll_period
            },
            0.1,
        );
        let next = async {
            let mut connection = self.db.connection().await?;
            B::next_event_due(&mut connection).await
        };
        match next.await {
            Ok(Some(due)) => {
                let wait = u64::try_from(due.saturating_sub(micros(self.db.now())))
                    .map_or(Duration::ZERO, Duration::from_micros);
                // A little after the due time (the claim compares with its own clock), and not
                // at once when an event is due already but was not claimable (its row locked by
                // a transaction about to end): no hot loop.
                period.min(wait.max(Duration::from_millis(9)) + Duration::from_millis(1))
            }
            Ok(None) => period,
            Err(error) => {
                tracing::debug!(%error, "reading the next event's due time failed");
                period
            }
        }
    }

    fn spawn_run(&self, hub: &Hub, event: ClaimedEvent, permit: OwnedSemaphorePermit) {
        self.shared().stats.add(&self.shared().stats.claimed, 1);
        let run = EventRun {
            db: self.db.clone(),
            hub: hub.clone(),
            processor: self.processor.clone(),
        };
        self.shared()
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(event.uuid.clone(), event.lease_token);
        let host = self.shared().stats.host.clone();
        let running_gauge = metrics::gauge!(telemetry::EVENTS_RUNNING, "host" => host.clone());
        running_gauge.increment(1.0);
        tokio::spawn(async move {
            let (uuid, token) = (event.uuid.clone(), event.lease_token);
            let duration = metrics::histogram!(
                telemetry::EVENT_RUN_DURATION,
                "host" => host,
                "command" => event.command_name.clone(),
            );
            let started = Instant::now();
            run.run(event).await;
            let took = started.elapsed();
            run.processor.shared.ran(took);
            let mut running = run
                .processor
                .shared
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Unless this host claimed the event again meanwhile (it was replaced while this
            // run was in progress): that run's lease must still be renewed.
            if running.get(&uuid) == Some(&token) {
                running.remove(&uuid);
            }
            drop(running);
            drop(permit);
            duration.record(took.as_secs_f64());
            running_gauge.decrement(1.0);
        });
    }
}

/// Renews the leases of the events running here, every third of the lease.
async fn heartbeat<B: Backend>(db: DbHub<B>, host: String, processor: EventProcessor) {
    let lease = db.settings().events.lease;
    let period = lease / 3;
    let stop = processor.shared.stop.clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // Runs in progress still finish: keep renewing until they did.
                if processor.running() == 0 {
                    return;
                }
                tokio::time::sleep(period).await;
            }
            () = tokio::time::sleep(period) => {}
        }
        let uuids = processor.running_uuids();
        if uuids.is_empty() {
            continue;
        }
        let renewed = async {
            let mut connection = db.connection().await?;
            let until = micros(db.now() + lease);
            B::renew_leases(&mut connection, &host, &uuids, until).await
        };
        if let Err(error) = renewed.await {
            tracing::warn!(%error, "renewing event leases failed; retrying at the next beat");
        }
    }
}

/// One event's run.
struct EventRun<B: Backend> {
    db: DbHub<B>,
    hub: Hub,
    processor: EventProcessor,
}

/// How a run ended.
enum Ended {
    Done,
    /// The claim was no longer the event's: nothing to give back.
    Fenced,
    InDoubt,
    /// Failed: retry unless permanent or out of attempts.
    Failed {
        error: String,
        permanent: bool,
    },
    /// Could not run here (no service of this hub handles it, yet): given back without counting
    /// the attempt.
    NotHere {
        error: String,
    },
}

impl<B: Backend> EventRun<B> {
    async fn run(&self, event: ClaimedEvent) {
        let max_attempts = self.db.settings().events.retry.max_attempts.max(1);
        let ended = if u32::try_from(event.attempts).unwrap_or(u32::MAX) > max_attempts {
            // Claimed more often than its attempts allow without a run giving it back: its
            // runs were lost (a host that crashed running it, leases that kept ending). It
            // dies instead of running again.
            Ended::Failed {
                error: format!(
                    "claimed {} times without a run that ended: its runs were lost (a host that crashed running it, or leases that kept ending)",
                    event.attempts - 1
                ),
                permanent: true,
            }
        } else {
            self.execute(&event).await
        };
        let stats = &self.processor.shared.stats;
        let (error, permanent) = match ended {
            Ended::Done => return stats.add(&stats.completed, 1),
            Ended::Fenced => {
                tracing::info!(event = %event.uuid, "an event's run was fenced off: its lease was lost");
                return stats.add(&stats.fenced, 1);
            }
            Ended::InDoubt => {
                tracing::warn!(event = %event.uuid, "an event run's commit is in doubt; its lease decides");
                return stats.add(&stats.in_doubt, 1);
            }
            Ended::Failed { error, permanent } => (error, permanent),
            Ended::NotHere { error } => {
                // A host starts its processor before its services are added: an event claimed
                // in between waits a little, its attempt not counted.
                tracing::debug!(event = %event.uuid, %error, "an event cannot run on this host yet");
                let now = self.db.now();
                let release = EventRelease {
                    uuid: &event.uuid,
                    lease_token: event.lease_token,
                    error: &error,
                    retry_at: Some(micros(now + NOT_HERE_DELAY)),
                    now: micros(now),
                    refund: true,
                };
                if let Err(release_error) = self.release(release).await {
                    tracing::warn!(event = %event.uuid, %release_error, "an event could not be given back; it is claimed again after its lease");
                    stats.add(&stats.release_failures, 1);
                }
                return;
            }
        };
        let retry = self.db.settings().events.retry;
        let attempts = u32::try_from(event.attempts).unwrap_or(u32::MAX);
        let dead = permanent || attempts >= retry.max_attempts;
        let now = self.db.now();
        let retry_at = (!dead).then(|| micros(now + retry.delay(attempts)));
        let release = EventRelease {
            uuid: &event.uuid,
            lease_token: event.lease_token,
            error: &error,
            retry_at,
            now: micros(now),
            refund: false,
        };
        match self.release(release).await {
            Ok(true) if dead => {
                tracing::error!(event = %event.uuid, command = %event.command_name, attempts, %error, "an event is dead");
                stats.add(&stats.dead, 1);
            }
            Ok(true) => {
                tracing::warn!(event = %event.uuid, command = %event.command_name, attempts, %error, "an event's run failed; it will run again");
                stats.add(&stats.retried, 1);
            }
            Ok(false) => stats.add(&stats.fenced, 1),
            Err(release_error) => {
                tracing::warn!(event = %event.uuid, %error, %release_error, "a failed event could not be given back; it is claimed again after its lease");
                stats.add(&stats.release_failures, 1);
            }
        }
    }

    async fn release(&self, release: EventRelease<'_>) -> Result<bool> {
        let mut connection = self.db.connection().await?;
        B::release_event(&mut connection, release).await
    }

    async fn execute(&self, event: &ClaimedEvent) -> Ended {
        let size = usize::try_from(event.payload_bytes).unwrap_or(usize::MAX);
        let Some(text) = event
            .command_json
            .as_deref()
            .filter(|_| size <= MAX_PAYLOAD_BYTES)
        else {
            return Ended::Failed {
                error: format!("payload of {size} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}"),
                permanent: true,
            };
        };
        let Ok(uuid) = uuid::Uuid::parse_str(&event.uuid) else {
            return Ended::Failed {
                error: format!("malformed uuid `{}`", event.uuid),
                permanent: true,
            };
        };
        let command: serde_json::Value = match serde_json::from_str(text) {
            Ok(command) => command,
            Err(error) => {
                return Ended::Failed {
                    error: format!("malformed command_json: {error}"),
                    permanent: true,
                };
            }
        };
        let claim = EventClaim {
            uuid,
            lease_token: event.lease_token,
        };
        let db = self.db.clone();
        let items = ofx_core::ContextItems::default();
        items.set(ofx_core::operation::EventDelivery::new(
            uuid,
            u32::try_from(event.attempts).unwrap_or(0),
        ));
        let options = CallOptions::new()
            .context_items(items)
            .prepare(move |ctx| db.begin_event_scope(ctx, claim.clone()));
        let result = self
            .hub
            .commander()
            .call_by_name(&event.command_name, command, options)
            .await;
        match result {
            Ok(_) => Ended::Done,
            Err(ofx_core::Error::CommitInDoubt { .. }) => Ended::InDoubt,
            Err(error)
                if matches!(
                    error.scope_error::<Error>(),
                    Some(Error::EventLeaseLost { .. })
                ) =>
            {
                Ended::Fenced
            }
            Err(
                error
                @ (ofx_core::Error::NoHandler { .. } | ofx_core::Error::ServiceDropped { .. }),
            ) => Ended::NotHere {
                error: error.to_string(),
            },
            Err(error) => {
                // A row that names no command, or does not decode as its command, never will.
                let permanent = error.is_permanent()
                    || matches!(
                        error,
                        ofx_core::Error::UnknownCommandName { .. }
                            | ofx_core::Error::CommandJson { .. }
                    );
                Ended::Failed {
                    error: error.to_string(),
                    permanent,
                }
            }
        }
    }
}
