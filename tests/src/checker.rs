//! A history checker in the manner of Jepsen: every call, main-branch run, invalidation run,
//! listener call and read made during a run is recorded in a [`History`]; the database gives
//! the ground truth ([`Truth`]); [`check`] counts each violation of ofx's promises and
//! [`Report::assert_clean`] fails with the history (JSON) that shows it.
//!
//! The invariants (each a count that must be 0):
//! - **lost**: a committed operation that a host running since before it never completed
//!   (no listener call for it there);
//! - **duplicate effects**: a call, or an event, whose business effect was committed twice;
//! - **main run elsewhere**: a main branch that ran on a host other than the caller's (a replay
//!   must run only the invalidation branch);
//! - **false success**: a call told `Ok` whose effect was not committed;
//! - **false failure**: a call told it failed (not "in doubt") whose effect was committed;
//! - **stale**: a value a host served after quiescence that differs from a direct read;
//! - **orphans**: a business row without its operation in the log, or a logged operation of the
//!   checked command without its business row;
//! - **duplicate listener calls**: a listener called twice for one operation on one host.
//!
//! A host process may write its records to a file ([`History::to_file`]): one JSON object per
//! line, flushed as it is written, so that a process killed with `SIGKILL` loses at most the
//! line it was writing ([`History::load`] skips a torn last line).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How a call ended, as its caller was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// It returned its output.
    Ok,
    /// It returned an error that says the command did not commit.
    Error {
        /// The error, as displayed.
        message: String,
    },
    /// It returned an error that says the commit is in doubt.
    InDoubt {
        /// The error, as displayed.
        message: String,
    },
}

/// One thing that happened during a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A call ended (`call` is the caller's own id, carried by the command).
    Call {
        /// The caller's id of the call.
        call: Uuid,
        /// The host that was called.
        host: String,
        /// The operation, when the outcome tells it.
        operation: Option<Uuid>,
        /// When it started, in µs since the Unix epoch.
        start_us: u64,
        /// When it ended, in µs since the Unix epoch.
        end_us: u64,
        /// What the caller was told.
        #[serde(flatten)]
        outcome: Outcome,
    },
    /// A main branch ran (it may not have committed).
    MainRun {
        /// The caller's id of the call.
        call: Uuid,
        /// The operation it ran for.
        operation: Uuid,
        /// Where it ran.
        host: String,
    },
    /// An invalidation branch ran.
    Invalidation {
        /// The operation.
        operation: Uuid,
        /// Where it ran.
        host: String,
    },
    /// A completion listener was called.
    Listener {
        /// The operation.
        operation: Uuid,
        /// Where.
        host: String,
        /// Whether the host executed the operation.
        local: bool,
        /// When, in µs since the Unix epoch.
        #[serde(default)]
        at_us: u64,
    },
    /// A host started reading the log after the row of index `after`: the operations logged
    /// up to there are not expected of it.
    HostStarted {
        /// The host.
        host: String,
        /// The last log index it is not expected to replay.
        after: i64,
    },
    /// A host stopped (or was killed): nothing more is expected of it.
    HostStopped {
        /// The host.
        host: String,
    },
    /// After quiescence, a host served `served` for `key` where a direct read gave `direct`.
    Read {
        /// The host.
        host: String,
        /// What was read.
        key: String,
        /// What the host served.
        served: i64,
        /// What the database holds.
        direct: i64,
    },
}

impl Record {
    /// The operation uuids and call ids the record names, to gather a violation's history.
    fn names(&self, id: Uuid) -> bool {
        match self {
            Self::Call {
                call, operation, ..
            } => *call == id || *operation == Some(id),
            Self::MainRun {
                call, operation, ..
            } => *call == id || *operation == id,
            Self::Invalidation { operation, .. } | Self::Listener { operation, .. } => {
                *operation == id
            }
            Self::HostStarted { .. } | Self::HostStopped { .. } | Self::Read { .. } => false,
        }
    }
}

/// The records of a run, in the order they were made; safe to share between tasks. Times are
/// µs of the wall clock since the Unix epoch, so that the records of several processes on one
/// machine compare.
#[derive(Debug)]
pub struct History {
    records: Mutex<Vec<Record>>,
    sink: Option<Mutex<std::fs::File>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history, kept in memory.
    pub fn new() -> Self {
        Self {
            records: Mutex::new(Vec::new()),
            sink: None,
        }
    }

    /// An empty history that also appends each record to `path` as one JSON line, flushed.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            sink: Some(Mutex::new(file)),
            ..Self::new()
        })
    }

    /// The records a [`to_file`](Self::to_file) history wrote to `path`; a torn last line (the
    /// process was killed while writing it) is skipped.
    ///
    /// # Errors
    /// When the file cannot be read, or a line other than the last is not a record.
    pub fn load(path: &Path) -> std::io::Result<Vec<Record>> {
        let text = std::fs::read_to_string(path)?;
        let lines: Vec<&str> = text.lines().collect();
        let mut records = Vec::with_capacity(lines.len());
        for (at, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(record) => records.push(record),
                Err(_) if at + 1 == lines.len() && !text.ends_with('\n') => {}
                Err(error) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}:{}: {error}", path.display(), at + 1),
                    ));
                }
            }
        }
        Ok(records)
    }

    /// µs since the Unix epoch.
    pub fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
            })
    }

    /// Adds a record.
    pub fn record(&self, record: Record) {
        if let Some(sink) = &self.sink {
            let mut line = serde_json::to_string(&record).unwrap_or_default();
            line.push('\n');
            let mut file = sink.lock().unwrap_or_else(PoisonError::into_inner);
            // A record that cannot be written shows as missing: the checker counts it.
            let _ = file.write_all(line.as_bytes());
        }
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }

    /// Adds records made elsewhere (another process's file).
    pub fn extend(&self, records: impl IntoIterator<Item = Record>) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(records);
    }

    /// Records a call's end, as `result` tells it: `in_doubt` says whether an error means the
    /// commit is in doubt.
    pub fn call_ended<T, E: std::fmt::Display>(
        &self,
        call: Uuid,
        host: &str,
        start_us: u64,
        result: &Result<(Uuid, T), E>,
        in_doubt: impl FnOnce(&E) -> Option<Uuid>,
    ) {
        let (operation, outcome) = match result {
            Ok((operation, _)) => (Some(*operation), Outcome::Ok),
            Err(error) => match in_doubt(error) {
                Some(operation) => (
                    Some(operation),
                    Outcome::InDoubt {
                        message: error.to_string(),
                    },
                ),
                None => (
                    None,
                    Outcome::Error {
                        message: error.to_string(),
                    },
                ),
            },
        };
        self.record(Record::Call {
            call,
            host: host.to_owned(),
            operation,
            start_us,
            end_us: self.now_us(),
            outcome,
        });
    }

    /// A copy of the records so far.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A logged operation, as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedOperation {
    /// Its log index.
    pub idx: i64,
    /// Its uuid.
    pub uuid: Uuid,
    /// Its command's name.
    pub command_name: String,
}

/// A business row: the effect of one call, written by its main branch in its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// The caller's id of the call.
    pub call: Uuid,
    /// The operation that wrote it.
    pub operation: Uuid,
}

/// What the database holds at the end of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Truth {
    /// The operation log (untrimmed).
    pub operations: Vec<LoggedOperation>,
    /// The business rows of the checked command (no key on the call: a duplicate is two rows).
    pub effects: Vec<Effect>,
    /// The command name whose operations must each have a business row.
    pub command_name: String,
    /// The events produced (each must have run once).
    #[serde(default)]
    pub events: Vec<Uuid>,
    /// One uuid per event effect row (no key on it either).
    pub event_effects: Vec<Uuid>,
}

/// Each invariant's count of violations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Committed operations some host never completed (host × operation pairs), and events
    /// that never ran.
    pub lost: u64,
    /// Calls or events whose effect was committed more than once.
    pub duplicate_effects: u64,
    /// Main branches run on a host other than the caller's.
    pub main_run_elsewhere: u64,
    /// Calls told `Ok` whose effect was not committed.
    pub false_success: u64,
    /// Calls told they failed whose effect was committed.
    pub false_failure: u64,
    /// Values served after quiescence that differ from a direct read.
    pub stale: u64,
    /// Business rows without their operation, and operations without their business row.
    pub orphans: u64,
    /// Listener calls beyond the first, per host and operation.
    pub duplicate_listener_calls: u64,
}

impl Counts {
    /// Whether every count is 0.
    pub fn is_clean(&self) -> bool {
        *self == Self::default()
    }

    /// The counts as (name, count) pairs, for a table.
    pub fn rows(&self) -> [(&'static str, u64); 8] {
        [
            ("lost", self.lost),
            ("duplicate_effects", self.duplicate_effects),
            ("main_run_elsewhere", self.main_run_elsewhere),
            ("false_success", self.false_success),
            ("false_failure", self.false_failure),
            ("stale", self.stale),
            ("orphans", self.orphans),
            ("duplicate_listener_calls", self.duplicate_listener_calls),
        ]
    }
}

/// Figures of a run that are not violations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Calls made.
    pub calls: u64,
    /// Calls told `Ok`.
    pub ok: u64,
    /// Calls told they failed.
    pub failed: u64,
    /// Calls told their commit is in doubt.
    pub in_doubt: u64,
    /// In-doubt calls that had committed.
    pub in_doubt_committed: u64,
    /// Operations in the log of the checked command.
    pub committed: u64,
    /// Main branches run (reprocessing may run one more than once, uncommitted).
    pub main_runs: u64,
    /// Invalidation branches run, over every host.
    pub invalidations: u64,
    /// Reads compared after quiescence.
    pub reads: u64,
    /// Replay lag on the other hosts (from the call's return on its host to the listener call
    /// on another), p50, in µs.
    pub lag_p50_us: u64,
    /// The same, p99.
    pub lag_p99_us: u64,
    /// The same, the largest.
    pub lag_max_us: u64,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The violations, counted.
    pub counts: Counts,
    /// Figures that are not violations.
    pub tally: Tally,
    /// Per violated invariant, the first few things that violate it, each with every record
    /// that names it.
    pub examples: BTreeMap<String, Vec<serde_json::Value>>,
}

/// How many examples a report keeps per invariant.
const EXAMPLES: usize = 5;

impl Report {
    fn violation(&mut self, invariant: &str, what: serde_json::Value) {
        let examples = self.examples.entry(invariant.to_owned()).or_default();
        if examples.len() < EXAMPLES {
            examples.push(what);
        }
    }

    /// Panics, printing the report and the histories that show each violation as JSON, unless
    /// every count is 0. `scenario` names the run.
    pub fn assert_clean(&self, scenario: &str) {
        assert!(
            self.counts.is_clean(),
            "{scenario}: invariants violated:\n{}",
            serde_json::to_string_pretty(self).unwrap_or_default()
        );
    }

    /// One line: the scenario, then each count and the tally.
    pub fn summary(&self, scenario: &str) -> String {
        let counts: Vec<String> = self
            .counts
            .rows()
            .iter()
            .map(|(name, count)| format!("{name}={count}"))
            .collect();
        format!(
            "{scenario}: {} | calls={} ok={} failed={} in_doubt={} (committed {}) committed_ops={} main_runs={} invalidations={} reads={} lag p50/p99/max={}/{}/{} µs",
            counts.join(" "),
            self.tally.calls,
            self.tally.ok,
            self.tally.failed,
            self.tally.in_doubt,
            self.tally.in_doubt_committed,
            self.tally.committed,
            self.tally.main_runs,
            self.tally.invalidations,
            self.tally.reads,
            self.tally.lag_p50_us,
            self.tally.lag_p99_us,
            self.tally.lag_max_us,
        )
    }
}

/// Checks `records` against `truth`.
pub fn check(records: &[Record], truth: &Truth) -> Report {
    let mut report = Report::default();
    let history_of = |id: Uuid| -> serde_json::Value {
        let named: Vec<&Record> = records.iter().filter(|record| record.names(id)).collect();
        serde_json::to_value(named).unwrap_or_default()
    };

    // The ground truth, indexed.
    let mut effects_per_call: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for effect in &truth.effects {
        effects_per_call
            .entry(effect.call)
            .or_default()
            .push(effect.operation);
    }
    let logged: HashMap<Uuid, &LoggedOperation> = truth
        .operations
        .iter()
        .map(|operation| (operation.uuid, operation))
        .collect();
    let effect_operations: HashSet<Uuid> = truth
        .effects
        .iter()
        .map(|effect| effect.operation)
        .collect();

    // Duplicate effects.
    for (call, operations) in &effects_per_call {
        if operations.len() > 1 {
            report.counts.duplicate_effects += operations.len() as u64 - 1;
            report.violation(
                "duplicate_effects",
                serde_json::json!({ "call": call, "operations": operations, "history": history_of(*call) }),
            );
        }
    }
    let mut per_event: HashMap<Uuid, u64> = HashMap::new();
    for event in &truth.event_effects {
        *per_event.entry(*event).or_default() += 1;
    }
    for event in &truth.events {
        if !per_event.contains_key(event) {
            report.counts.lost += 1;
            report.violation("lost", serde_json::json!({ "event_never_ran": event }));
        }
    }
    for (event, count) in per_event {
        if count > 1 {
            report.counts.duplicate_effects += count - 1;
            report.violation(
                "duplicate_effects",
                serde_json::json!({ "event": event, "effects": count }),
            );
        }
    }

    // Orphans, both ways.
    for effect in &truth.effects {
        if !logged.contains_key(&effect.operation) {
            report.counts.orphans += 1;
            report.violation(
                "orphans",
                serde_json::json!({ "effect_without_operation": effect, "history": history_of(effect.call) }),
            );
        }
    }
    for operation in &truth.operations {
        if operation.command_name == truth.command_name
            && !effect_operations.contains(&operation.uuid)
        {
            report.counts.orphans += 1;
            report.violation(
                "orphans",
                serde_json::json!({ "operation_without_effect": operation, "history": history_of(operation.uuid) }),
            );
        }
    }
    report.tally.committed = truth
        .operations
        .iter()
        .filter(|operation| operation.command_name == truth.command_name)
        .count() as u64;

    // Calls: what each caller was told against what committed.
    let mut caller_host: HashMap<Uuid, &str> = HashMap::new();
    for record in records {
        let Record::Call {
            call,
            host,
            outcome,
            ..
        } = record
        else {
            continue;
        };
        caller_host.insert(*call, host);
        report.tally.calls += 1;
        let committed = effects_per_call.contains_key(call);
        match outcome {
            Outcome::Ok => {
                report.tally.ok += 1;
                if !committed {
                    report.counts.false_success += 1;
                    report.violation("false_success", history_of(*call));
                }
            }
            Outcome::Error { .. } => {
                report.tally.failed += 1;
                if committed {
                    report.counts.false_failure += 1;
                    report.violation("false_failure", history_of(*call));
                }
            }
            Outcome::InDoubt { .. } => {
                report.tally.in_doubt += 1;
                report.tally.in_doubt_committed += u64::from(committed);
            }
        }
    }

    // Main branches run where they were called, only.
    for record in records {
        if let Record::MainRun { call, host, .. } = record {
            report.tally.main_runs += 1;
            if caller_host.get(call).is_some_and(|caller| caller != host) {
                report.counts.main_run_elsewhere += 1;
                report.violation("main_run_elsewhere", history_of(*call));
            }
        }
    }

    // Listener calls per host: once each, and one for every operation the host should have
    // seen.
    let mut listened: HashMap<(&str, Uuid), u64> = HashMap::new();
    let mut started_after: HashMap<&str, i64> = HashMap::new();
    let mut stopped: HashSet<&str> = HashSet::new();
    for record in records {
        match record {
            Record::Listener {
                operation, host, ..
            } => *listened.entry((host, *operation)).or_default() += 1,
            Record::Invalidation { .. } => report.tally.invalidations += 1,
            Record::HostStarted { host, after } => {
                started_after.insert(host, *after);
            }
            Record::HostStopped { host } => {
                stopped.insert(host);
            }
            Record::Read {
                host,
                key,
                served,
                direct,
            } => {
                report.tally.reads += 1;
                if served != direct {
                    report.counts.stale += 1;
                    report.violation(
                        "stale",
                        serde_json::json!({ "host": host, "key": key, "served": served, "direct": direct }),
                    );
                }
            }
            Record::Call { .. } | Record::MainRun { .. } => {}
        }
    }
    for ((host, operation), count) in &listened {
        if *count > 1 {
            report.counts.duplicate_listener_calls += count - 1;
            report.violation(
                "duplicate_listener_calls",
                serde_json::json!({ "host": host, "operation": operation, "calls": count, "history": history_of(*operation) }),
            );
        }
    }
    let mut returned: HashMap<Uuid, (&str, u64)> = HashMap::new();
    for record in records {
        if let Record::Call {
            host,
            operation: Some(operation),
            end_us,
            outcome: Outcome::Ok,
            ..
        } = record
        {
            returned.insert(*operation, (host, *end_us));
        }
    }
    let mut lags: Vec<u64> = records
        .iter()
        .filter_map(|record| match record {
            Record::Listener {
                operation,
                host,
                local: false,
                at_us,
            } => returned
                .get(operation)
                .filter(|(caller, _)| caller != host)
                .map(|(_, end_us)| at_us.saturating_sub(*end_us)),
            _ => None,
        })
        .collect();
    lags.sort_unstable();
    if let Some(max) = lags.last() {
        let at = |fraction: f64| lags[((lags.len() - 1) as f64 * fraction) as usize];
        report.tally.lag_p50_us = at(0.5);
        report.tally.lag_p99_us = at(0.99);
        report.tally.lag_max_us = *max;
    }
    for (host, after) in &started_after {
        if stopped.contains(host) {
            continue;
        }
        for operation in &truth.operations {
            if operation.idx > *after && !listened.contains_key(&(*host, operation.uuid)) {
                report.counts.lost += 1;
                report.violation(
                    "lost",
                    serde_json::json!({ "host": host, "operation": operation, "history": history_of(operation.uuid) }),
                );
            }
        }
    }
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed expectation is the test failing
mod tests {
    use super::*;

    const COMMAND: &str = "checked";

    fn call(call: Uuid, host: &str, outcome: Outcome) -> Record {
        Record::Call {
            call,
            host: host.to_owned(),
            operation: None,
            start_us: 0,
            end_us: 1,
            outcome,
        }
    }

    fn listener(operation: Uuid, host: &str) -> Record {
        Record::Listener {
            operation,
            host: host.to_owned(),
            local: false,
            at_us: 2,
        }
    }

    fn started(host: &str) -> Record {
        Record::HostStarted {
            host: host.to_owned(),
            after: 0,
        }
    }

    /// One committed call on host `a`, seen by `a` and `b`: clean.
    fn clean() -> (Vec<Record>, Truth, Uuid, Uuid) {
        let (id, operation) = (Uuid::new_v4(), Uuid::new_v4());
        let records = vec![
            started("a"),
            started("b"),
            Record::MainRun {
                call: id,
                operation,
                host: "a".to_owned(),
            },
            call(id, "a", Outcome::Ok),
            listener(operation, "a"),
            listener(operation, "b"),
        ];
        let truth = Truth {
            operations: vec![LoggedOperation {
                idx: 1,
                uuid: operation,
                command_name: COMMAND.to_owned(),
            }],
            effects: vec![Effect {
                call: id,
                operation,
            }],
            command_name: COMMAND.to_owned(),
            events: Vec::new(),
            event_effects: Vec::new(),
        };
        (records, truth, id, operation)
    }

    #[test]
    fn a_clean_history_is_clean() {
        let (records, truth, _, _) = clean();
        let report = check(&records, &truth);
        report.assert_clean("clean");
        assert_eq!(report.tally.calls, 1);
        assert_eq!(report.tally.committed, 1);
    }

    #[test]
    fn an_operation_a_host_never_completed_is_lost() {
        let (mut records, truth, _, operation) = clean();
        records.retain(|record| *record != listener(operation, "b"));
        assert_eq!(check(&records, &truth).counts.lost, 1);
        // Not expected of a host that stopped, nor of one that started after it.
        let mut stopped = records.clone();
        stopped.push(Record::HostStopped { host: "b".into() });
        assert!(check(&stopped, &truth).counts.is_clean());
        let mut late = records;
        late.push(Record::HostStarted {
            host: "b".into(),
            after: 1,
        });
        assert!(check(&late, &truth).counts.is_clean());
    }

    #[test]
    fn a_second_effect_of_one_call_or_event_is_a_duplicate() {
        let (records, mut truth, id, _) = clean();
        let again = Uuid::new_v4();
        truth.effects.push(Effect {
            call: id,
            operation: again,
        });
        truth.operations.push(LoggedOperation {
            idx: 2,
            uuid: again,
            command_name: COMMAND.to_owned(),
        });
        let event = Uuid::new_v4();
        truth.events = vec![event];
        truth.event_effects = vec![event, event];
        let report = check(&records, &truth);
        assert_eq!(report.counts.duplicate_effects, 2);
        assert!(report.examples.contains_key("duplicate_effects"));
    }

    #[test]
    fn an_event_that_never_ran_is_lost() {
        let (records, mut truth, _, _) = clean();
        let (ran, never) = (Uuid::new_v4(), Uuid::new_v4());
        truth.events = vec![ran, never];
        truth.event_effects = vec![ran];
        let report = check(&records, &truth);
        assert_eq!(report.counts.lost, 1);
        assert!(
            report.examples["lost"][0]
                .to_string()
                .contains(&never.to_string())
        );
    }

    #[test]
    fn told_ok_without_an_effect_is_a_false_success() {
        let (mut records, truth, _, _) = clean();
        records.push(call(Uuid::new_v4(), "a", Outcome::Ok));
        assert_eq!(check(&records, &truth).counts.false_success, 1);
    }

    #[test]
    fn told_failed_with_an_effect_is_a_false_failure_but_in_doubt_is_not() {
        let (mut records, truth, id, _) = clean();
        records.push(call(
            id,
            "a",
            Outcome::Error {
                message: "gone".into(),
            },
        ));
        assert_eq!(check(&records, &truth).counts.false_failure, 1);
        records.pop();
        records.push(call(
            id,
            "a",
            Outcome::InDoubt {
                message: "unknown".into(),
            },
        ));
        let report = check(&records, &truth);
        assert!(report.counts.is_clean());
        assert_eq!(report.tally.in_doubt_committed, 1);
    }

    #[test]
    fn a_main_branch_run_on_another_host_is_counted() {
        let (mut records, truth, id, operation) = clean();
        records.push(Record::MainRun {
            call: id,
            operation,
            host: "b".into(),
        });
        assert_eq!(check(&records, &truth).counts.main_run_elsewhere, 1);
    }

    #[test]
    fn a_value_that_differs_from_the_database_is_stale() {
        let (mut records, truth, _, _) = clean();
        records.push(Record::Read {
            host: "b".into(),
            key: "k".into(),
            served: 1,
            direct: 2,
        });
        records.push(Record::Read {
            host: "a".into(),
            key: "k".into(),
            served: 2,
            direct: 2,
        });
        let report = check(&records, &truth);
        assert_eq!(report.counts.stale, 1);
        assert_eq!(report.tally.reads, 2);
    }

    #[test]
    fn rows_without_their_counterpart_are_orphans() {
        let (records, mut truth, _, _) = clean();
        truth.effects.push(Effect {
            call: Uuid::new_v4(),
            operation: Uuid::new_v4(),
        });
        truth.operations.push(LoggedOperation {
            idx: 2,
            uuid: Uuid::new_v4(),
            command_name: COMMAND.to_owned(),
        });
        // An operation of another command needs no business row.
        truth.operations.push(LoggedOperation {
            idx: 3,
            uuid: Uuid::new_v4(),
            command_name: "other".to_owned(),
        });
        let report = check(&records, &truth);
        assert_eq!(report.counts.orphans, 2);
        // The hosts never completed the two others: lost too.
        assert_eq!(report.counts.lost, 4);
    }

    #[test]
    fn a_second_listener_call_is_a_duplicate() {
        let (mut records, truth, _, operation) = clean();
        records.push(listener(operation, "b"));
        assert_eq!(check(&records, &truth).counts.duplicate_listener_calls, 1);
    }

    #[test]
    fn a_failing_check_prints_the_history() {
        let (mut records, truth, _, operation) = clean();
        records.push(listener(operation, "b"));
        let report = check(&records, &truth);
        let failure = std::panic::catch_unwind(|| report.assert_clean("dup")).unwrap_err();
        let message = failure.downcast_ref::<String>().unwrap();
        assert!(message.contains("duplicate_listener_calls"), "{message}");
        assert!(message.contains(&operation.to_string()), "{message}");
        assert!(message.contains("\"kind\": \"listener\""), "{message}");
    }

    #[test]
    fn a_file_history_survives_a_torn_last_line() {
        let path = std::env::temp_dir().join(format!("ofx-history-{}.jsonl", Uuid::new_v4()));
        let history = History::to_file(&path).unwrap();
        history.record(started("a"));
        history.record(Record::HostStopped { host: "a".into() });
        drop(history);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"kind\":\"list")
            .unwrap();
        let records = History::load(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], started("a"));
        std::fs::remove_file(&path).unwrap();
    }
}
