//! User filters and their place in the order.

use std::sync::{Arc, Mutex};

use ofx_core::{CommandCall, CommandFilter, CommandFuture, Error, Hub, Next};

use crate::common::{Add, Host};

/// What a [`Recorder`] saw: `(label, command, invalidating)`.
type Seen = Arc<Mutex<Vec<(&'static str, &'static str, bool)>>>;

/// Records the calls it sees.
#[derive(Clone)]
struct Recorder {
    label: &'static str,
    priority: i32,
    seen: Seen,
}

impl CommandFilter for Recorder {
    fn priority(&self) -> i32 {
        self.priority
    }

    fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a> {
        self.seen.lock().unwrap().push((
            self.label,
            call.command_name(),
            call.context().is_invalidating(),
        ));
        next.run(call)
    }
}

/// Refuses every `Add` of more than 100.
struct Limit;

impl CommandFilter for Limit {
    fn priority(&self) -> i32 {
        50_000
    }

    fn run<'a>(&'a self, call: &'a CommandCall, next: Next<'a>) -> CommandFuture<'a> {
        if call.command::<Add>().is_some_and(|add| add.amount > 100) {
            return Box::pin(async { Err(Error::Rejected("too much".to_owned())) });
        }
        next.run(call)
    }
}

#[tokio::test]
async fn filters_run_by_priority_and_never_see_the_invalidation_pass() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Every priority a filter could take, from the lowest to the highest, added out of order:
    // the order comes from the priorities, and none of them sees an invalidation pass.
    let priorities = [
        i32::MIN,
        -1,
        0,
        10_000,
        50_000,
        90_000,
        100_000,
        1_000_000,
        i32::MAX,
    ];
    let mut builder = Hub::builder();
    for (index, priority) in priorities.iter().enumerate().rev() {
        builder = builder.filter(Recorder {
            label: LABELS[index],
            priority: *priority,
            seen: seen.clone(),
        });
    }
    let host = Host::with(builder);
    host.counters
        .hub
        .commander()
        .call(Add { key: 0, amount: 1 })
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<_> = ["counters.add", "counters.audit"]
        .into_iter()
        .flat_map(|command| {
            LABELS
                .iter()
                .rev()
                .map(move |label| (*label, command, false))
        })
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(
        host.invalidations().len(),
        2,
        "the invalidation branches ran, without the filters"
    );
}

const LABELS: [&str; 9] = [
    "min",
    "minus-one",
    "zero",
    "10k",
    "50k",
    "90k",
    "100k",
    "1m",
    "max",
];

#[tokio::test]
async fn a_filter_inside_the_scope_can_refuse_a_command() {
    let host = Host::with(Hub::builder().filter(Limit));
    let commander = host.counters.hub.commander();
    let error = commander
        .call(Add {
            key: 0,
            amount: 500,
        })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Rejected(_)));
    assert_eq!(host.main_runs(), 0);
    assert!(host.operations.lock().unwrap().is_empty());
    assert_eq!(commander.call(Add { key: 0, amount: 5 }).await.unwrap(), 5);
}
