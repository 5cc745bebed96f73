//! The metrics ofx-diesel records through the [`metrics`] facade (the application installs the
//! exporter; without one, every call is a no-op). See the README's "Metrics and tracing"
//! section for what each means.
//!
//! A log reader's, an event processor's and a state service's metrics are per hub: they are
//! labelled with `host`, the hub's host id.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::reader::ReaderStats;

/// Gauge `{host}`: rows of the log the reader has not replayed yet, as of its last read (0
/// when its last read reached the log's end; after a full batch, the log's head less the
/// reader's cursor).
pub const READER_LAG_ROWS: &str = "ofx_reader_lag_rows";
/// Gauge `{host}`: seconds the reader is behind, as of its last read: 0 when its last read
/// reached the log's end, else the age of the newest row it replayed (the rows it has not
/// read yet committed after it).
pub const READER_LAG_SECONDS: &str = "ofx_reader_lag_seconds";
/// Histogram `{host}`: rows of each non-empty batch the reader read (gaps re-read included).
pub const READER_BATCH_ROWS: &str = "ofx_reader_batch_rows";
/// Histogram `{host}`: seconds from an operation's commit on another host to its replay
/// here.
pub const READER_REPLAY_DELAY: &str = "ofx_reader_replay_delay_seconds";
/// Counter `{host}`: operations the reader replayed.
pub const READER_REPLAYED: &str = "ofx_reader_replayed_total";
/// Counter `{host}`: rows that could not be read or decoded (logged, skipped).
pub const READER_BAD_ROWS: &str = "ofx_reader_bad_rows_total";
/// Counter `{host}`: times the database failed and the reader backed off.
pub const READER_FAILURES: &str = "ofx_reader_failures_total";
/// Counter `{host}`: replays given up after their retry window.
pub const READER_REPLAY_FAILURES: &str = "ofx_reader_replay_failures_total";
/// Counter `{host}`: times the reader found rows trimmed before it read them (it invalidated
/// everything).
pub const READER_COVERAGE_LOSSES: &str = "ofx_reader_coverage_losses_total";
/// Counter `{host}`: missing indexes given up once no transaction could fill them.
pub const READER_GAPS_CLOSED: &str = "ofx_reader_gaps_closed_total";
/// Counter `{host}`: missing indexes given up while a transaction could still fill them.
pub const READER_GAPS_EXPIRED: &str = "ofx_reader_gaps_expired_total";

/// Counter `{backend}`: pooled connections that failed at an operation's `BEGIN` (they died
/// unseen while idle) and were replaced before the operation sent anything.
pub const STALE_CONNECTIONS: &str = "ofx_db_stale_connections_total";

/// Counter `{host}`: events claimed by the host's event processor (a run started).
pub const EVENTS_CLAIMED: &str = "ofx_events_claimed_total";
/// Counter `{host}`: event runs that committed (the event is done).
pub const EVENTS_COMPLETED: &str = "ofx_events_completed_total";
/// Counter `{host}`: failed event runs after which the event is due again.
pub const EVENTS_RETRIED: &str = "ofx_events_retried_total";
/// Counter `{host}`: events declared dead.
pub const EVENTS_DEAD: &str = "ofx_events_dead_total";
/// Counter `{host}`: event runs whose commit was refused (their lease was lost).
pub const EVENTS_FENCED: &str = "ofx_events_fenced_total";
/// Counter `{host}`: event runs whose commit stayed in doubt.
pub const EVENTS_IN_DOUBT: &str = "ofx_events_in_doubt_total";
/// Gauge `{host}`: events running on the host now.
pub const EVENTS_RUNNING: &str = "ofx_events_running";
/// Histogram `{host, command}`: seconds an event's run took, from its start to its end
/// (commit or release).
pub const EVENT_RUN_DURATION: &str = "ofx_event_run_duration_seconds";

/// Gauge `{host, projection}`: the position of the last stream event the state applied.
pub const STATE_POSITION: &str = "ofx_state_position";
/// Gauge `{host, projection}`: stream events the host knows of and has not applied yet.
pub const STATE_LAG_EVENTS: &str = "ofx_state_lag_events";
/// Gauge `{host, projection}`: 1 when the state service is ready, 0 before.
pub const STATE_READY: &str = "ofx_state_ready";
/// Counter `{host, projection}`: stream events applied (quarantined ones excluded).
pub const STATE_EVENTS_APPLIED: &str = "ofx_state_events_applied_total";
/// Counter `{host, projection}`: stream events quarantined.
pub const STATE_QUARANTINED: &str = "ofx_state_quarantined_total";

/// Counter `{host, map}`: changes of a reliable map applied by a host's follower.
pub const MAP_CHANGES_APPLIED: &str = "ofx_map_changes_applied_total";

/// Publishes a reader's counters (absolute values of its [`ReaderStats`]).
pub(crate) fn record_reader_stats(host: &str, stats: &ReaderStats) {
    let counters = [
        (READER_REPLAYED, &stats.replayed),
        (READER_BAD_ROWS, &stats.bad_rows),
        (READER_FAILURES, &stats.failures),
        (READER_REPLAY_FAILURES, &stats.replay_failures),
        (READER_COVERAGE_LOSSES, &stats.coverage_losses),
        (READER_GAPS_CLOSED, &stats.gaps_closed),
        (READER_GAPS_EXPIRED, &stats.gaps_expired),
    ];
    for (name, value) in counters {
        metrics::counter!(name, "host" => host.to_owned()).absolute(value.load(Ordering::Relaxed));
    }
}

/// Publishes a reader's lag after a read: `behind` rows not replayed yet, the newest row
/// replayed committed at `newest` (micros since the epoch), when it is behind.
pub(crate) fn record_reader_lag(host: &str, behind: i64, newest: Option<i64>) {
    let seconds = match newest {
        Some(committed_at) if behind > 0 => age(committed_at),
        _ => 0.0,
    };
    #[allow(clippy::cast_precision_loss)] // a gauge is an f64
    let rows = behind.max(0) as f64;
    metrics::gauge!(READER_LAG_ROWS, "host" => host.to_owned()).set(rows);
    metrics::gauge!(READER_LAG_SECONDS, "host" => host.to_owned()).set(seconds);
}

/// Records one batch of `rows` read.
pub(crate) fn record_reader_batch(host: &str, rows: usize) {
    #[allow(clippy::cast_precision_loss)] // a histogram's value is an f64
    metrics::histogram!(READER_BATCH_ROWS, "host" => host.to_owned()).record(rows as f64);
}

/// Records the delay from the commit of an operation (micros since the epoch) to its replay.
pub(crate) fn record_replay_delay(host: &str, committed_at: i64) {
    metrics::histogram!(READER_REPLAY_DELAY, "host" => host.to_owned()).record(age(committed_at));
}

/// Seconds since `micros` (micros since the epoch); 0 for a time in the future (clocks of
/// two hosts differ).
fn age(micros: i64) -> f64 {
    let now = crate::row::micros(SystemTime::now());
    #[allow(clippy::cast_precision_loss)] // seconds as an f64
    let seconds = now.saturating_sub(micros).max(0) as f64 / 1e6;
    seconds
}
