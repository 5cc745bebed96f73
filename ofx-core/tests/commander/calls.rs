//! Calls: main branch once, invalidation after success only, nested commands, failures.

use ofx_core::{CallKind, Error, capture};

use crate::common::{Add, Audit, CounterError, Fail, Host, Previous, Reset};

#[tokio::test]
async fn the_main_branch_runs_once_and_invalidation_follows_before_call_returns() {
    let host = Host::new();
    let counters = &host.counters;
    let commander = counters.hub.commander();
    let (before, computed) = capture(counters.value(1)).await.unwrap();
    assert_eq!(before, 0);

    let total = commander.call(Add { key: 1, amount: 5 }).await.unwrap();
    assert_eq!(total, 5);
    assert_eq!(host.main_runs(), 2, "add and its nested audit, once each");
    assert!(
        !computed.is_consistent(),
        "read-your-writes: invalidated when call returns"
    );
    assert_eq!(counters.value(1).await, 5);
}

#[tokio::test]
async fn nested_commands_are_recorded_with_their_own_items_and_invalidated_first() {
    let host = Host::new();
    let commander = host.counters.hub.commander();
    commander.call(Add { key: 2, amount: 7 }).await.unwrap();

    assert_eq!(
        host.invalidations(),
        vec![("audit", 2, Some(1000)), ("add", 2, Some(0))],
        "nested first, each with its own items"
    );
    let operations = host.operations.lock().unwrap().clone();
    assert_eq!(operations.len(), 1, "one operation for the outer command");
    let operation = &operations[0];
    assert_eq!(operation.command_name, "counters.add");
    assert_eq!(&operation.host_id, host.counters.hub.host_id());
    assert_eq!(
        operation.items.get("counters.previous"),
        Some(&serde_json::json!(0))
    );
    assert_eq!(operation.nested.len(), 1);
    assert_eq!(operation.nested[0].command_name, "counters.audit");
    assert_eq!(
        operation.nested[0].items.get("counters.previous"),
        Some(&serde_json::json!(1000))
    );
    assert_eq!(operation.uuid.get_version_num(), 7, "time-ordered uuids");
}

#[tokio::test]
async fn a_failed_command_records_nothing_and_invalidates_nothing() {
    let host = Host::new();
    let counters = &host.counters;
    let (_, computed) = capture(counters.value(3)).await.unwrap();
    let (_, audits) = capture(counters.audit_count()).await.unwrap();

    let error = counters
        .hub
        .commander()
        .call(Fail {
            key: 3,
            panic: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.handler_error::<CounterError>(),
            Some(CounterError::Refused(3))
        ),
        "the handler's error reaches the caller typed: {error:?}"
    );
    assert!(computed.is_consistent());
    assert!(
        audits.is_consistent(),
        "the nested command that succeeded is not invalidated either"
    );
    assert!(host.invalidations().is_empty());
    assert!(host.operations.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_panicking_handler_is_an_error_and_records_nothing() {
    let host = Host::new();
    let (_, computed) = capture(host.counters.value(4)).await.unwrap();
    let error = host
        .counters
        .hub
        .commander()
        .call(Fail {
            key: 4,
            panic: true,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::HandlerPanicked {
                command: "counters.fail"
            }
        ),
        "{error:?}"
    );
    assert!(computed.is_consistent());
    assert!(host.operations.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_backend_command_is_refused_to_clients() {
    let host = Host::new();
    let commander = host.counters.hub.commander();
    let error = commander.call_from_client(Reset).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::BackendCommand {
                command: "counters.reset"
            }
        ),
        "{error:?}"
    );
    commander.call(Reset).await.unwrap();
    assert_eq!(
        commander.call_from_client(Audit { key: 0 }).await.unwrap(),
        ()
    );
}

#[tokio::test]
async fn a_command_needs_a_service_on_the_hub() {
    let host = Host::new();
    let other = ofx_core::Hub::new().unwrap();
    let error = other.commander().call(Audit { key: 0 }).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::NoHandler {
                command: "counters.audit"
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("Hub::add_service"), "{error}");

    // A service the hub holds but that was dropped.
    let commander = host.counters.hub.commander();
    drop(host);
    let error = commander.call(Audit { key: 0 }).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::ServiceDropped {
                command: "counters.audit",
                service,
            } if service.ends_with("Counters")
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn items_of_an_unexpected_shape_are_a_typed_error() {
    let items = ofx_core::OperationItems::from_json(
        [("counters.previous".to_owned(), serde_json::json!("text"))].into(),
    );
    assert!(matches!(
        items.try_get::<Previous>(),
        Err(Error::Item {
            key: "counters.previous",
            ..
        })
    ));
    assert_eq!(items.get::<Previous>(), None);
    let _ = CallKind::Nested;
}
