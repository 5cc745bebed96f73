//! `ofx`: the operations command line of an ofx database. It reads the operation log, the
//! hosts' heartbeats, the events and the state services' tables, and trims the log or redrives
//! and purges dead events, on SQLite or PostgreSQL.
//!
//! It opens the database as a host would (`DbHub::open`) but attaches it to no hub: it starts
//! no log reader, event processor, trimmer or heartbeat. It applies no migration unless told
//! (`--migrate`).

mod commands;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ofx_diesel::{Backend, DbHub, DbSettings};

/// The operations command line of an ofx database: the operation log, the hosts reading it,
/// events with guaranteed delivery, and the state services' tables.
///
/// The database is a SQLite file (a path, or `sqlite://path`) or a PostgreSQL URL
/// (`postgres://user@host:5432/db`). `ofx` attaches to no hub: it starts no log reader, event
/// processor or trimmer, and changes nothing but what a command says (`trim`, `events redrive`,
/// `events purge`). It applies no migration unless given `--migrate`.
#[derive(Debug, Parser)]
#[command(name = "ofx", version, propagate_version = true)]
struct Cli {
    /// The database: a SQLite file path (or `sqlite://path`), or a `postgres://` URL.
    #[arg(long, env = "OFX_DATABASE_URL", global = true, value_name = "URL")]
    database_url: Option<String>,

    /// Print JSON instead of a table: one document (`tail --follow`: one object per line).
    #[arg(long, global = true)]
    json: bool,

    /// Apply ofx's pending migrations to the database first (as a host does when it opens it);
    /// without it, nothing is created, and a SQLite file must exist.
    #[arg(long, global = true)]
    migrate: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The last operations of the log (index, uuid, command, host, commit time, nested
    /// commands), oldest first; `--follow` prints new ones as they commit.
    Tail(TailArgs),
    /// One operation of the log by its uuid: its command, items and nested commands as JSON,
    /// its host, times and index.
    Inspect(InspectArgs),
    /// The hosts whose log readers report their position (table `ofx_hosts`), with their lag:
    /// operations behind the log's head and time since their last heartbeat (stale when
    /// overdue, stopped when they shut down cleanly).
    #[command(visible_alias = "lag")]
    Hosts,
    /// Deletes operations older than `--older-than` (default 30m, as the trimmer's default
    /// `max_age`), as the trimmer does: it records how far it deleted, so a host that had not
    /// read them invalidates everything rather than miss them.
    Trim(TrimArgs),
    /// Events with guaranteed delivery (`ofx_events`): list, dead, redrive, purge.
    #[command(subcommand)]
    Events(EventsCommand),
    /// What the state services' tables hold: streams, snapshots, quarantined events.
    #[command(subcommand)]
    State(StateCommand),
}

#[derive(Debug, Args)]
struct TailArgs {
    /// How many operations to print first.
    #[arg(short = 'n', long = "lines", default_value_t = 20, value_name = "N")]
    lines: usize,
    /// Keep printing operations as they commit (polling), until Ctrl-C, SIGTERM, or a closed
    /// standard output (noticed at the next line written).
    #[arg(short = 'f', long)]
    follow: bool,
    /// How often `--follow` polls the log (such as 200ms, 1s).
    #[arg(long, default_value = "500ms", value_parser = duration_arg, value_name = "DURATION")]
    interval: Duration,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The operation's uuid.
    uuid: uuid::Uuid,
}

#[derive(Debug, Args)]
struct TrimArgs {
    /// Delete operations logged before this long ago (such as 30m, 2h, 7d).
    #[arg(long, default_value = "30m", value_parser = duration_arg, value_name = "DURATION")]
    older_than: Duration,
    /// Also delete finished events as the trimmer does with its default retention (done after
    /// 24h, dead after 7d).
    #[arg(long)]
    events: bool,
    /// Also delete the rows of hosts silent for more than 7 days.
    #[arg(long)]
    hosts: bool,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Events, earliest due first: state, command, attempts, due time, last error.
    List(EventsListArgs),
    /// Dead events (given up: a permanent error, attempts spent, or a bad row), with why.
    Dead(LimitArgs),
    /// Makes a dead event (or every dead event) pending again, due now, attempts reset.
    Redrive(EventTarget),
    /// Deletes a dead event (or every dead event).
    Purge(EventTarget),
}

#[derive(Debug, Args)]
struct EventsListArgs {
    /// Only events in this state.
    #[arg(long, value_enum, default_value_t = StateFilter::All)]
    state: StateFilter,
    /// At most this many.
    #[arg(short = 'n', long = "limit", default_value_t = 50, value_name = "N")]
    limit: usize,
}

#[derive(Debug, Args)]
struct LimitArgs {
    /// At most this many.
    #[arg(short = 'n', long = "limit", default_value_t = 50, value_name = "N")]
    limit: usize,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct EventTarget {
    /// The dead event's uuid.
    uuid: Option<uuid::Uuid>,
    /// Every dead event.
    #[arg(long)]
    all_dead: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StateFilter {
    /// Waiting for their due time, or running.
    Pending,
    /// Their run committed (kept until trimmed).
    Done,
    /// Given up.
    Dead,
    /// Every state.
    All,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Per stream its head and events kept; per projection its stored snapshots (version,
    /// position) and quarantined events.
    Status,
    /// The quarantined stream events (`ofx_state_quarantine`), newest first, with why.
    Quarantine(LimitArgs),
}

fn duration_arg(text: &str) -> Result<Duration, String> {
    output::parse_duration(text)
}

/// Why a command failed.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The arguments cannot work.
    Usage(String),
    /// What was asked for is not there.
    NotFound(String),
    /// The database failed.
    Db {
        /// What was being done.
        doing: &'static str,
        /// The database's error.
        error: ofx_diesel::Error,
    },
    /// Standard output is closed: not an error for the user.
    Closed,
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(message) | Self::NotFound(message) | Self::Other(message) => {
                f.write_str(message)
            }
            Self::Db { doing, error } => {
                write!(f, "{doing}: {error}")?;
                let text = error.to_string();
                if text.contains("no such table")
                    || (text.contains("relation") && text.contains("does not exist"))
                {
                    write!(
                        f,
                        "\nhint: this database lacks ofx's tables (or this version's): open it \
                         with a host of this ofx version, or pass --migrate"
                    )?;
                }
                Ok(())
            }
            Self::Closed => f.write_str("standard output closed"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Self::Closed
        } else {
            Self::Other(format!("cannot write the output: {error}"))
        }
    }
}

/// Which database a URL names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Sqlite(String),
    Postgres(String),
}

fn target(url: &str) -> Result<Target, CliError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(CliError::Usage("the database URL is empty".to_owned()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url.to_owned()));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.is_empty() {
        return Err(CliError::Usage(format!(
            "`{url}` names no SQLite file (use a path, sqlite://path, or postgres://…)"
        )));
    }
    if let Some((scheme, _)) = path.split_once("://") {
        return Err(CliError::Usage(format!(
            "unsupported database URL scheme `{scheme}://` (use a SQLite file path, sqlite://path, \
             or postgres://…)"
        )));
    }
    Ok(Target::Sqlite(path.to_owned()))
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((credentials, host)) = rest.split_once('@')
        && let Some((user, _password)) = credentials.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

async fn open<B: Backend>(url: &str, migrate: bool) -> Result<DbHub<B>, CliError> {
    let mut settings = DbSettings::default();
    settings.migrate = migrate;
    settings.pool_size = 2;
    // Nothing is started: the database is never attached to a hub.
    settings.read_log = false;
    settings.trim = false;
    settings.events.process = false;
    settings.host_heartbeat = None;
    DbHub::<B>::open(url, settings)
        .await
        .map_err(|error| CliError::Db {
            doing: "cannot open the database",
            error,
        })
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let url = cli.database_url.as_deref().ok_or_else(|| {
        CliError::Usage(
            "no database: pass --database-url URL or set OFX_DATABASE_URL (a SQLite file path, \
             sqlite://path, or postgres://…)"
                .to_owned(),
        )
    })?;
    let json = cli.json;
    match target(url)? {
        Target::Sqlite(path) => {
            if !cli.migrate && path != ":memory:" && !std::path::Path::new(&path).exists() {
                return Err(CliError::NotFound(format!(
                    "no SQLite database at `{path}` (pass --migrate to create one)"
                )));
            }
            let db = open::<ofx_diesel::Sqlite>(&path, cli.migrate).await?;
            commands::run(&db, cli.command, json).await
        }
        Target::Postgres(url) => {
            let db = open::<ofx_diesel::Postgres>(&url, cli.migrate)
                .await
                .map_err(|error| match error {
                    CliError::Db { error, .. } => CliError::Other(format!(
                        "cannot open the database at {}: {error}",
                        redacted(&url)
                    )),
                    other => other,
                })?;
            commands::run(&db, cli.command, json).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ofx: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) | Err(CliError::Closed) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ofx: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            target("todos.db").ok(),
            Some(Target::Sqlite("todos.db".into()))
        );
        assert_eq!(
            target("sqlite:///tmp/a.db").ok(),
            Some(Target::Sqlite("/tmp/a.db".into()))
        );
        assert_eq!(
            target("postgres://u@h/db").ok(),
            Some(Target::Postgres("postgres://u@h/db".into()))
        );
        assert!(target("mysql://h/db").is_err());
        assert!(target("").is_err());
        assert_eq!(
            redacted("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
