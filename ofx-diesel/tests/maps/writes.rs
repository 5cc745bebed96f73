//! Writes: typed errors, nothing written or notified when refused.

use ofx_diesel::maps::MapManager;
use ofx_diesel::{Backend, Error};

use crate::common::{Host, Op, VALUES};

backend_tests! {
    refused_writes_are_typed_errors_and_leave_nothing =>
        sqlite_refused_writes_are_typed_errors_and_leave_nothing,
        postgres_refused_writes_are_typed_errors_and_leave_nothing;
}

fn db_error(error: &ofx_core::Error) -> String {
    format!("{error:?}")
}

async fn refused_writes_are_typed_errors_and_leave_nothing<B: Backend>(url: &str) {
    let a = Host::<B>::open(url).await;
    a.apply(vec![Op::Add("a".into(), 1)]).await.unwrap();
    let exists = a
        .apply(vec![Op::Set("b".into(), 2), Op::Add("a".into(), 3)])
        .await
        .unwrap_err();
    assert!(db_error(&exists).contains("MapKeyExists"), "{exists:?}");
    let missing = a.apply(vec![Op::Update("zz".into(), 1)]).await.unwrap_err();
    assert!(db_error(&missing).contains("MapKeyMissing"), "{missing:?}");
    assert_eq!(
        a.table().await,
        [("a".to_owned(), 1)].into_iter().collect(),
        "the refused commands wrote nothing"
    );
    assert_eq!(a.recorder.committed().len(), 1);
    // A name is one pair of types.
    let other = MapManager::<B>::new(&a.db);
    other.map::<String, i64>(VALUES).unwrap();
    assert!(matches!(
        other.map::<String, String>(VALUES),
        Err(Error::MapAttach(_))
    ));
}
