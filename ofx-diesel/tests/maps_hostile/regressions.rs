//! Attacks that broke a documented promise when the hostile review wrote them, kept as
//! regression tests now that each holds (each test's doc says what it showed then).

use crate::kit::{Host, Note, Op, Sql, assert_redo_order, insert_change_row, values};

backend_tests! {
    undecodable_rows_are_not_announced_as_transactions =>
        sqlite_undecodable_rows_are_not_announced_as_transactions,
        postgres_undecodable_rows_are_not_announced_as_transactions;
}

/// Promise (module docs, "Order"; `TransactionCommitted`; the brief's "undecodable rows are
/// skipped"): `transaction_committed` comes *after the changes of its transaction*, and
/// `TransactionCommitted::changes` is "how many changes it made"; a change that does not decode
/// is skipped and counted (`MapStatus::skipped`).
///
/// Reproduction: one committed transaction; then rows inserted by SQL into `ofx_stream_events`,
/// stream `ofx.maps`, at the head + 1, + 2, …: a body that is not JSON, a change whose key is not
/// a string, an unknown action, and `{}` with the operation id `by-hand` (not a uuid); then a
/// real transaction.
///
/// Observed (SQLite and PostgreSQL): every host counts the rows in `skipped` and delivers no
/// change for them, but announces each row as a transaction of its own:
/// `transaction_committed(TransactionCommitted { sequence: <the row's position>, changes: 1,
/// operation: <the row's operation_uuid> })` with no change before it; for the row whose
/// operation id is not a uuid, `operation` is the nil uuid `00000000-…`. So a skipped row is
/// not skipped by the manager's observers: they see phantom transactions (one per garbage row)
/// claiming a change nobody was told about, and an operation id that never existed.
async fn undecodable_rows_are_not_announced_as_transactions<B: Sql>(url: &str) {
    let a = Host::<B>::open(url).await;
    let b = Host::<B>::open(url).await;
    a.run(vec![values(Op::Set("a".into(), 1))]).await.unwrap();
    a.sync().await;
    let mut hand = Vec::new();
    for (body, operation) in [
        (
            "not json at all".to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            r#"{"map":"values","action":"add","key":5,"new":1}"#.to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            r#"{"map":"values","action":"explode","key":"z","new":1}"#.to_owned(),
            uuid::Uuid::new_v4().to_string(),
        ),
        ("{}".to_owned(), "by-hand".to_owned()),
    ] {
        hand.push(insert_change_row(&a.db, &body, &operation).await);
    }
    b.run(vec![values(Op::Set("b".into(), 2))]).await.unwrap();
    for (n, host) in [&a, &b].into_iter().enumerate() {
        host.sync().await;
        assert!(host.maps.status().skipped >= 4, "host {n}: counted");
        let notes = host.recorder.notes();
        assert!(
            notes.iter().all(|note| !matches!(
                note,
                Note::Committed(committed) if committed.operation.is_nil()
            )),
            "host {n}: a transaction with the nil operation id: {notes:#?}"
        );
        let phantoms: Vec<_> = host
            .recorder
            .committed()
            .into_iter()
            .filter(|committed| hand.contains(&committed.sequence))
            .collect();
        assert!(
            phantoms.is_empty(),
            "host {n}: undecodable rows announced as transactions: {phantoms:#?}"
        );
        // Every transaction announced is preceded by its changes.
        assert_redo_order(&notes, true);
    }
}
