//! The subcommands, on any backend.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use ofx_diesel::inspect::StateOverview;
use ofx_diesel::{Backend, DbHub, EventInfo, EventState, HostInfo, LoggedOperation};
use serde_json::{Value, json};

use crate::output::{Out, cut, json_time, short_duration, table_time};
use crate::{CliError, Command, EventsCommand, StateCommand, StateFilter, TailArgs, TrimArgs};

/// How long `tail --follow` keeps looking for an operation whose index it passed (PostgreSQL
/// commits rows out of index order): past it, a row still missing is taken as rolled back.
const GAP_WAIT: Duration = Duration::from_secs(30);
/// The most index ranges `tail --follow` keeps looking for.
const MAX_GAPS: usize = 256;
/// Rows `tail --follow` reads per poll.
const FOLLOW_BATCH: usize = 512;

pub(crate) async fn run<B: Backend>(
    db: &DbHub<B>,
    command: Command,
    json: bool,
) -> Result<(), CliError> {
    let mut out = Out;
    match command {
        Command::Tail(args) => tail(db, &args, json, &mut out).await,
        Command::Inspect(args) => inspect(db, args.uuid, json, &mut out).await,
        Command::Hosts => hosts(db, json, &mut out).await,
        Command::Trim(args) => trim(db, &args, json, &mut out).await,
        Command::Events(command) => events(db, command, json, &mut out).await,
        Command::State(StateCommand::Status) => state_status(db, json, &mut out).await,
        Command::State(StateCommand::Quarantine(args)) => {
            quarantine(db, args.limit, json, &mut out).await
        }
    }
}

// ---- tail ----

fn operation_summary(op: &LoggedOperation) -> Value {
    json!({
        "index": op.index,
        "uuid": op.uuid,
        "command": op.command_name,
        "host": op.host_id,
        "logged_at": json_time(op.logged_at),
        "committed_at": json_time(op.committed_at),
        "nested": op.nested_count(),
    })
}

fn operation_row(op: &LoggedOperation) -> Vec<String> {
    vec![
        op.index.to_string(),
        op.uuid.clone(),
        op.command_name.clone(),
        op.host_id.clone(),
        table_time(op.committed_at),
        op.nested_count()
            .map_or_else(|| "?".to_owned(), |n| n.to_string()),
    ]
}

const TAIL_HEADER: [&str; 6] = ["INDEX", "UUID", "COMMAND", "HOST", "COMMITTED", "NESTED"];

async fn tail<B: Backend>(
    db: &DbHub<B>,
    args: &TailArgs,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let log = db.log();
    // The head first: whatever commits after it is followed.
    let head = if args.follow {
        log.head().await.map_err(db_err("cannot read the log"))?
    } else {
        None
    };
    let mut operations = log
        .tail(args.lines)
        .await
        .map_err(db_err("cannot read the log"))?;
    if let Some(head) = head {
        operations.retain(|op| op.index <= head);
    }
    if json && !args.follow {
        let list: Vec<Value> = operations.iter().map(operation_summary).collect();
        return out.json(&Value::Array(list), false);
    }
    if json {
        for op in &operations {
            out.json(&operation_summary(op), true)?;
        }
    } else {
        let rows: Vec<Vec<String>> = operations.iter().map(operation_row).collect();
        if args.follow {
            // Lines printed as they come cannot be aligned with later ones: tab-free columns.
            out.line(&TAIL_HEADER.join("  "))?;
            for row in &rows {
                out.line(&row.join("  "))?;
            }
        } else if rows.is_empty() {
            out.line("(the log is empty)")?;
        } else {
            out.table(&TAIL_HEADER, &rows)?;
        }
    }
    if !args.follow {
        return Ok(());
    }
    follow::<B>(db, head.unwrap_or(0), args.interval, json, out).await
}

/// Prints operations committed after `cursor` as they commit, until Ctrl-C or SIGTERM (also
/// while a read hangs). A database that fails is read again with backoff, said once on
/// standard error.
async fn follow<B: Backend>(
    db: &DbHub<B>,
    cursor: i64,
    interval: Duration,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut terminate = Terminate::new()?;
    let mut follower = Follower {
        cursor,
        gaps: Vec::new(),
        printed: BTreeSet::new(),
    };
    let mut failures = 0u32;
    loop {
        let polled = tokio::select! {
            () = terminate.recv() => return Ok(()),
            polled = follower.poll(db, json, out) => polled,
        };
        let pause = match polled {
            Ok(full) => {
                if failures > 0 {
                    eprintln!("ofx: reading the log again");
                    failures = 0;
                }
                if full {
                    continue;
                }
                interval
            }
            Err(CliError::Db { doing, error }) => {
                if failures == 0 {
                    eprintln!("ofx: {doing}: {error}; retrying");
                }
                failures = failures.saturating_add(1);
                (interval * 2u32.saturating_pow(failures.min(8))).min(Duration::from_secs(5))
            }
            Err(other) => return Err(other),
        };
        tokio::select! {
            () = terminate.recv() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// What `tail --follow` knows of the log.
struct Follower {
    /// The highest index read.
    cursor: i64,
    /// Index ranges `[from, to)` passed over and not seen yet, with when they were found: on
    /// PostgreSQL a row may commit after rows with higher indexes.
    gaps: Vec<(i64, i64, Instant)>,
    /// Indexes printed that a gap's re-read may return again.
    printed: BTreeSet<i64>,
}

impl Follower {
    /// Reads and prints what committed since the last poll; whether a full batch was read
    /// (more may wait).
    async fn poll<B: Backend>(
        &mut self,
        db: &DbHub<B>,
        json: bool,
        out: &mut Out,
    ) -> Result<bool, CliError> {
        let mut found = Vec::new();
        self.gaps.retain(|(_, _, since)| since.elapsed() < GAP_WAIT);
        if !self.gaps.is_empty() {
            let ranges: Vec<(i64, i64)> =
                self.gaps.iter().map(|&(from, to, _)| (from, to)).collect();
            let mut connection = db
                .connection()
                .await
                .map_err(db_err("cannot read the log"))?;
            let late = B::read_ranges(&mut connection, &ranges, 1024)
                .await
                .map_err(db_err("cannot read the log"))?;
            drop(connection);
            found.extend(late.into_iter().map(LoggedOperation::from));
        }
        let new = db
            .log()
            .after(self.cursor, FOLLOW_BATCH)
            .await
            .map_err(db_err("cannot read the log"))?;
        for op in &new {
            if op.index > self.cursor + 1 && self.gaps.len() < MAX_GAPS {
                self.gaps.push((self.cursor + 1, op.index, Instant::now()));
            }
            self.cursor = self.cursor.max(op.index);
        }
        let full = new.len() == FOLLOW_BATCH;
        found.extend(new);
        found.sort_by_key(|op| op.index);
        for op in found {
            if !self.printed.insert(op.index) {
                continue;
            }
            self.found(op.index);
            if json {
                out.json(&operation_summary(&op), true)?;
            } else {
                out.line(&operation_row(&op).join("  "))?;
            }
        }
        // Forget what no gap can bring back.
        let lowest = self
            .gaps
            .iter()
            .map(|&(from, _, _)| from)
            .min()
            .unwrap_or(self.cursor);
        self.printed = self.printed.split_off(&lowest);
        Ok(full)
    }

    /// Takes `index` out of the gap that holds it.
    fn found(&mut self, index: i64) {
        let mut split = Vec::new();
        self.gaps.retain_mut(|(from, to, since)| {
            if index < *from || index >= *to {
                return true;
            }
            if index + 1 < *to {
                split.push((index + 1, *to, *since));
            }
            *to = index;
            *from < *to
        });
        self.gaps.extend(split);
    }
}

/// Ctrl-C (SIGINT) and SIGTERM: listened for from its creation on, so that a signal that
/// comes before the first wait is not lost (nor takes the process down).
struct Terminate {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Terminate {
    fn new() -> Result<Self, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind| {
                signal(kind)
                    .map_err(|error| CliError::Other(format!("cannot listen for signals: {error}")))
            };
            Ok(Self {
                term: listen(SignalKind::terminate())?,
                interrupt: listen(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Ends when a signal comes.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

// ---- inspect ----

fn parse_json(text: Option<&str>) -> Value {
    match text {
        None => Value::Null,
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
    }
}

async fn inspect<B: Backend>(
    db: &DbHub<B>,
    uuid: uuid::Uuid,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let op = db
        .log()
        .find(uuid)
        .await
        .map_err(db_err("cannot read the log"))?
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "no operation {uuid} in the log (never committed, or trimmed since)"
            ))
        })?;
    let command = parse_json(op.command_json.as_deref());
    let items = parse_json(op.items_json.as_deref());
    let nested = parse_json(op.nested_json.as_deref());
    if json {
        let document = json!({
            "index": op.index,
            "uuid": op.uuid,
            "command_name": op.command_name,
            "command": command,
            "items": items,
            "nested": nested,
            "host": op.host_id,
            "logged_at": json_time(op.logged_at),
            "committed_at": json_time(op.committed_at),
            "payload_bytes": op.payload_bytes,
        });
        return out.json(&document, false);
    }
    let pretty = |value: &Value| {
        if value.is_null() {
            format!(
                "(not read: {} bytes, over the log's limit)",
                op.payload_bytes
            )
        } else {
            serde_json::to_string_pretty(value).unwrap_or_default()
        }
    };
    let waited = op
        .committed_at
        .duration_since(op.logged_at)
        .unwrap_or_default();
    out.line(&format!("index         {}", op.index))?;
    out.line(&format!("uuid          {}", op.uuid))?;
    out.line(&format!("command name  {}", op.command_name))?;
    out.line(&format!("host          {}", op.host_id))?;
    out.line(&format!("logged at     {}", table_time(op.logged_at)))?;
    out.line(&format!(
        "committed at  {} ({} after it was logged)",
        table_time(op.committed_at),
        short_duration(waited)
    ))?;
    out.line(&format!("payload       {} bytes", op.payload_bytes))?;
    out.line("command")?;
    out.line(&indent(&pretty(&command)))?;
    out.line("items")?;
    out.line(&indent(&pretty(&items)))?;
    match nested.as_array() {
        Some(list) if list.is_empty() => out.line("nested        (none)")?,
        Some(list) => {
            out.line(&format!("nested        {}", list.len()))?;
            for (i, nested) in list.iter().enumerate() {
                let name = nested
                    .get("command_name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                out.line(&format!("  [{i}] {name}"))?;
                out.line(&indent(&indent(&pretty(nested))))?;
            }
        }
        None => {
            out.line("nested")?;
            out.line(&indent(&pretty(&nested)))?;
        }
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- hosts ----

async fn hosts<B: Backend>(db: &DbHub<B>, json: bool, out: &mut Out) -> Result<(), CliError> {
    let hosts = db.hosts().await.map_err(db_err("cannot read the hosts"))?;
    let log = db.log();
    let head = log.head().await.map_err(db_err("cannot read the log"))?;
    let now = SystemTime::now();
    let mut lagging = Vec::with_capacity(hosts.len());
    for host in &hosts {
        let behind = log
            .count_after(host.cursor)
            .await
            .map_err(db_err("cannot read the log"))?;
        lagging.push(behind);
    }
    let status = |host: &HostInfo| {
        if host.stopped_at.is_some() {
            "stopped"
        } else if host.is_stale(now) {
            "stale"
        } else {
            "live"
        }
    };
    let silent = |host: &HostInfo| now.duration_since(host.heartbeat_at).unwrap_or_default();
    if json {
        let list: Vec<Value> = hosts
            .iter()
            .zip(&lagging)
            .map(|(host, behind)| {
                json!({
                    "host": host.host_id,
                    "host_name": host.host_name,
                    "pid": host.pid,
                    "status": status(host),
                    "stale": host.is_stale(now),
                    "cursor": host.cursor,
                    "replayed_through": host.replayed_through,
                    "replayed": host.replayed,
                    "behind": behind,
                    "heartbeat_at": json_time(host.heartbeat_at),
                    "heartbeat_age_secs": silent(host).as_secs_f64(),
                    "heartbeat_period_secs": host.heartbeat_period.as_secs_f64(),
                    "started_at": json_time(host.started_at),
                    "stopped_at": host.stopped_at.map(json_time),
                })
            })
            .collect();
        return out.json(&json!({ "head": head, "hosts": list }), false);
    }
    out.line(&format!(
        "log head: {}",
        head.map_or_else(|| "(empty log)".to_owned(), |head| head.to_string())
    ))?;
    if hosts.is_empty() {
        return out.line(
            "(no host has reported: hosts write their row when their log reader runs, with \
             DbSettings::host_heartbeat)",
        );
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .zip(&lagging)
        .map(|(host, behind)| {
            vec![
                host.host_id.clone(),
                status(host).to_owned(),
                host.cursor.to_string(),
                host.replayed_through
                    .map_or_else(|| "-".to_owned(), |at| at.to_string()),
                behind.to_string(),
                format!("{} ago", short_duration(silent(host))),
                host.pid.to_string(),
                table_time(host.started_at),
            ]
        })
        .collect();
    out.table(
        &[
            "HOST",
            "STATUS",
            "CURSOR",
            "REPLAYED THROUGH",
            "BEHIND",
            "HEARTBEAT",
            "PID",
            "STARTED",
        ],
        &rows,
    )
}

// ---- trim ----

async fn trim<B: Backend>(
    db: &DbHub<B>,
    args: &TrimArgs,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut settings = db.settings().clone();
    settings.max_age = args.older_than;
    settings.migrate = false;
    // A second handle with the cutoff asked for (the trim reads `max_age` from the settings).
    let trimming = DbHub::<B>::open(db.url(), settings)
        .await
        .map_err(db_err("cannot open the database"))?;
    let operations = trimming
        .trim()
        .await
        .map_err(db_err("cannot trim the log"))?;
    let events = if args.events {
        Some(
            trimming
                .events()
                .trim()
                .await
                .map_err(db_err("cannot trim the events"))?,
        )
    } else {
        None
    };
    let hosts = if args.hosts {
        Some(
            trimming
                .trim_hosts()
                .await
                .map_err(db_err("cannot trim the hosts"))?,
        )
    } else {
        None
    };
    if json {
        return out.json(
            &json!({
                "operations": operations,
                "older_than_secs": args.older_than.as_secs_f64(),
                "events": events,
                "hosts": hosts,
            }),
            false,
        );
    }
    out.line(&format!(
        "trimmed {operations} operation{} logged more than {} ago",
        plural(operations),
        short_duration(args.older_than)
    ))?;
    if let Some(events) = events {
        out.line(&format!(
            "trimmed {events} finished event{}",
            plural(events)
        ))?;
    }
    if let Some(hosts) = hosts {
        out.line(&format!("deleted {hosts} silent host row{}", plural(hosts)))?;
    }
    Ok(())
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

// ---- events ----

fn state_name(state: Option<EventState>) -> &'static str {
    match state {
        Some(EventState::Pending) => "pending",
        Some(EventState::Done) => "done",
        Some(EventState::Dead) => "dead",
        _ => "unknown",
    }
}

fn event_json(event: &EventInfo) -> Value {
    json!({
        "uuid": event.uuid.to_string(),
        "state": state_name(event.state),
        "command_name": event.command_name,
        "command": parse_json(Some(&event.command_json)),
        "key": event.key,
        "operation": event.operation,
        "host": event.host_id,
        "attempts": event.attempts,
        "logged_at": json_time(event.logged_at),
        "due_at": json_time(event.due_at),
        "lease_owner": event.lease_owner,
        "lease_until": event.lease_until.map(json_time),
        "last_error": event.last_error,
        "finished_at": event.finished_at.map(json_time),
    })
}

async fn list_events<B: Backend>(
    db: &DbHub<B>,
    state: Option<EventState>,
    limit: usize,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let events = db
        .events()
        .list(state, limit)
        .await
        .map_err(db_err("cannot read the events"))?;
    if json {
        return out.json(
            &Value::Array(events.iter().map(event_json).collect()),
            false,
        );
    }
    if events.is_empty() {
        return out.line("(no events)");
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|event| {
            vec![
                event.uuid.to_string(),
                state_name(event.state).to_owned(),
                event.command_name.clone(),
                event.attempts.to_string(),
                table_time(event.due_at),
                event.key.clone().unwrap_or_default(),
                event
                    .last_error
                    .as_deref()
                    .map(|error| cut(error, 80))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.table(
        &[
            "UUID",
            "STATE",
            "COMMAND",
            "ATTEMPTS",
            "DUE",
            "KEY",
            "LAST ERROR",
        ],
        &rows,
    )
}

async fn events<B: Backend>(
    db: &DbHub<B>,
    command: EventsCommand,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let no_dead_event = |uuid: uuid::Uuid| {
        move |error| match error {
            ofx_diesel::Error::NoSuchEvent(_) => CliError::NotFound(format!(
                "no dead event {uuid} (only dead events can be redriven or purged)"
            )),
            error => CliError::Db {
                doing: "cannot change the event",
                error,
            },
        }
    };
    match command {
        EventsCommand::List(args) => {
            let state = match args.state {
                StateFilter::Pending => Some(EventState::Pending),
                StateFilter::Done => Some(EventState::Done),
                StateFilter::Dead => Some(EventState::Dead),
                StateFilter::All => None,
            };
            list_events(db, state, args.limit, json, out).await
        }
        EventsCommand::Dead(args) => {
            list_events(db, Some(EventState::Dead), args.limit, json, out).await
        }
        EventsCommand::Redrive(target) => {
            let count = match target.uuid {
                Some(uuid) => {
                    db.events()
                        .redrive(uuid)
                        .await
                        .map_err(no_dead_event(uuid))?;
                    1
                }
                None => db
                    .events()
                    .redrive_dead()
                    .await
                    .map_err(db_err("cannot redrive the dead events"))?,
            };
            if json {
                return out.json(&json!({ "redriven": count }), false);
            }
            out.line(&format!(
                "redrove {count} dead event{} (pending again, due now)",
                plural(count)
            ))
        }
        EventsCommand::Purge(target) => {
            let count = match target.uuid {
                Some(uuid) => {
                    db.events().purge(uuid).await.map_err(no_dead_event(uuid))?;
                    1
                }
                None => db
                    .events()
                    .purge_dead()
                    .await
                    .map_err(db_err("cannot purge the dead events"))?,
            };
            if json {
                return out.json(&json!({ "purged": count }), false);
            }
            out.line(&format!("purged {count} dead event{}", plural(count)))
        }
    }
}

// ---- state ----

fn overview_json(overview: &StateOverview) -> Value {
    json!({
        "streams": overview.streams.iter().map(|s| json!({
            "stream": s.stream,
            "head": s.head,
            "events": s.events,
            "last_appended_at": s.last_appended_at.map(json_time),
        })).collect::<Vec<_>>(),
        "snapshots": overview.snapshots.iter().map(|s| json!({
            "projection": s.projection,
            "version": s.version,
            "position": s.position,
            "saved_at": json_time(s.saved_at),
        })).collect::<Vec<_>>(),
        "quarantine": overview.quarantine.iter().map(|q| json!({
            "projection": q.projection,
            "version": q.version,
            "stream": q.stream,
            "count": q.count,
        })).collect::<Vec<_>>(),
    })
}

async fn state_status<B: Backend>(
    db: &DbHub<B>,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let overview = db
        .state_overview()
        .await
        .map_err(db_err("cannot read the state tables"))?;
    if json {
        return out.json(&overview_json(&overview), false);
    }
    let streams: Vec<Vec<String>> = overview
        .streams
        .iter()
        .map(|s| {
            vec![
                s.stream.clone(),
                s.head.to_string(),
                s.events.to_string(),
                s.last_appended_at.map(table_time).unwrap_or_default(),
            ]
        })
        .collect();
    section(
        out,
        "STREAMS",
        &["STREAM", "HEAD", "EVENTS", "LAST APPENDED"],
        &streams,
    )?;
    out.line("")?;
    let snapshots: Vec<Vec<String>> = overview
        .snapshots
        .iter()
        .map(|s| {
            vec![
                s.projection.clone(),
                s.version.to_string(),
                s.position.to_string(),
                table_time(s.saved_at),
            ]
        })
        .collect();
    section(
        out,
        "SNAPSHOTS (stored in the database)",
        &["PROJECTION", "VERSION", "POSITION", "SAVED"],
        &snapshots,
    )?;
    out.line("")?;
    let quarantine: Vec<Vec<String>> = overview
        .quarantine
        .iter()
        .map(|q| {
            vec![
                q.projection.clone(),
                q.version.to_string(),
                q.stream.clone(),
                q.count.to_string(),
            ]
        })
        .collect();
    section(
        out,
        "QUARANTINE",
        &["PROJECTION", "VERSION", "STREAM", "EVENTS"],
        &quarantine,
    )?;
    Ok(())
}

/// A titled table, or `(none)` under its title when it has no rows.
fn section(
    out: &mut Out,
    title: &str,
    header: &[&str],
    rows: &[Vec<String>],
) -> Result<(), CliError> {
    out.line(title)?;
    if rows.is_empty() {
        out.line("(none)")
    } else {
        out.table(header, rows)
    }
}

async fn quarantine<B: Backend>(
    db: &DbHub<B>,
    limit: usize,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let events = db
        .quarantine(limit)
        .await
        .map_err(db_err("cannot read the quarantine"))?;
    if json {
        let list: Vec<Value> = events
            .iter()
            .map(|q| {
                json!({
                    "projection": q.projection,
                    "version": q.version,
                    "stream": q.stream,
                    "position": q.position,
                    "kind": q.kind,
                    "reason": q.reason,
                    "quarantined_at": json_time(q.quarantined_at),
                })
            })
            .collect();
        return out.json(&Value::Array(list), false);
    }
    if events.is_empty() {
        return out.line("(no quarantined events)");
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|q| {
            vec![
                q.projection.clone(),
                q.version.to_string(),
                q.stream.clone(),
                q.position.to_string(),
                q.kind.clone(),
                table_time(q.quarantined_at),
                cut(&q.reason, 80),
            ]
        })
        .collect();
    out.table(
        &[
            "PROJECTION",
            "VERSION",
            "STREAM",
            "POSITION",
            "KIND",
            "QUARANTINED",
            "REASON",
        ],
        &rows,
    )
}

fn db_err(doing: &'static str) -> impl Fn(ofx_diesel::Error) -> CliError {
    move |error| CliError::Db { doing, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(follower: &Follower) -> Vec<(i64, i64)> {
        let mut ranges: Vec<(i64, i64)> = follower
            .gaps
            .iter()
            .map(|&(from, to, _)| (from, to))
            .collect();
        ranges.sort_unstable();
        ranges
    }

    #[test]
    fn a_late_row_takes_its_index_out_of_its_gap() {
        let mut follower = Follower {
            cursor: 10,
            gaps: vec![(3, 8, Instant::now()), (9, 10, Instant::now())],
            printed: BTreeSet::new(),
        };
        follower.found(5);
        assert_eq!(ranges(&follower), [(3, 5), (6, 8), (9, 10)]);
        follower.found(3);
        assert_eq!(ranges(&follower), [(4, 5), (6, 8), (9, 10)]);
        follower.found(7);
        assert_eq!(ranges(&follower), [(4, 5), (6, 7), (9, 10)]);
        for index in [4, 6, 9] {
            follower.found(index);
        }
        assert!(follower.gaps.is_empty());
        follower.found(12);
        assert!(follower.gaps.is_empty());
    }
}
