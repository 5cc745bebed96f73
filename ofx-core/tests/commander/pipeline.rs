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
async fn filters_run_by_priority_and_see_the_invalidation_pass() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let outer = Recorder {
        label: "outer",
        priority: 2_000_000,
        seen: seen.clone(),
    };
    let inner = Recorder {
        label: "inner",
        priority: 50_000,
        seen: seen.clone(),
    };
    // Added inner first: the order comes from the priorities.
    let host = Host::with(Hub::builder().filter(inner).filter(outer));
    host.counters
        .hub
        .commander()
        .call(Add { key: 0, amount: 1 })
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("outer", "counters.add", false),
            ("inner", "counters.add", false),
            ("outer", "counters.audit", false),
            ("inner", "counters.audit", false),
            ("outer", "counters.audit", true),
            ("inner", "counters.audit", true),
            ("outer", "counters.add", true),
            ("inner", "counters.add", true),
        ]
    );
}

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
