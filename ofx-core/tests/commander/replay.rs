//! Replays: an operation serialized on one hub invalidates the same keys on another.

use ofx_core::{Error, Operation, ReplayError, capture};

use crate::common::{Add, Host};

#[tokio::test]
async fn a_replayed_operation_invalidates_the_same_keys_and_runs_no_main_branch() {
    let a = Host::new();
    let b = Host::new();
    let (_, on_b) = capture(b.counters.value(5)).await.unwrap();
    let (_, audits_on_b) = capture(b.counters.audit_count()).await.unwrap();
    let (_, other_on_b) = capture(b.counters.value(6)).await.unwrap();

    a.counters
        .hub
        .commander()
        .call(Add { key: 5, amount: 3 })
        .await
        .unwrap();
    let json = a.operations.lock().unwrap()[0].to_json().unwrap();

    let operation = Operation::from_json(&json).unwrap();
    assert!(
        b.counters
            .hub
            .commander()
            .replay(operation.clone())
            .await
            .unwrap()
    );
    assert!(!on_b.is_consistent());
    assert!(
        !audits_on_b.is_consistent(),
        "the nested command was replayed too"
    );
    assert!(other_on_b.is_consistent(), "only the named keys");
    assert_eq!(b.main_runs(), 0, "a replay runs no main branch");
    assert_eq!(
        b.invalidations(),
        vec![("audit", 5, Some(1000)), ("add", 5, Some(0))],
        "with each command's items, nested first"
    );

    // The same operation again is known: nothing runs.
    assert!(
        !b.counters
            .hub
            .commander()
            .replay(operation.clone())
            .await
            .unwrap()
    );
    assert_eq!(b.invalidations().len(), 2);
    // And the executing host ignores its own operation.
    assert!(
        !a.counters
            .hub
            .commander()
            .replay(operation.clone())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_unknown_command_is_a_typed_error_and_the_rest_is_replayed() {
    let a = Host::new();
    let b = Host::new();
    a.counters
        .hub
        .commander()
        .call(Add { key: 1, amount: 1 })
        .await
        .unwrap();
    let mut operation = a.operations.lock().unwrap()[0].clone();
    operation.nested[0].command_name = "counters.unheard_of".to_owned();
    let operation = Operation::from_json(&operation.to_json().unwrap()).unwrap();
    let (_, on_b) = capture(b.counters.value(1)).await.unwrap();

    let error = b
        .counters
        .hub
        .commander()
        .replay(operation.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ReplayError::Undecodable(Error::UnknownCommand { name, .. }) if name == "counters.unheard_of"),
        "{error:?}"
    );
    assert!(
        !on_b.is_consistent(),
        "the known command was still invalidated"
    );
    assert!(
        !b.counters.hub.notifier().is_known(operation.uuid),
        "a failed replay can be tried again"
    );
}

#[tokio::test]
async fn a_malformed_command_is_a_typed_error() {
    let a = Host::new();
    let b = Host::new();
    a.counters
        .hub
        .commander()
        .call(Add { key: 1, amount: 1 })
        .await
        .unwrap();
    let mut operation = a.operations.lock().unwrap()[0].clone();
    operation.command = serde_json::json!({ "key": "not a number" });
    let operation = Operation::from_json(&operation.to_json().unwrap()).unwrap();
    let error = b
        .counters
        .hub
        .commander()
        .replay(operation.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ReplayError::Undecodable(Error::CommandJson { command, .. }) if command == "counters.add"),
        "{error:?}"
    );
}
