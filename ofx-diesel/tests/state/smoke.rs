//! The basic path: an append on host A is seen by host B's `current_state`, and a compute
//! method reading the state on B is invalidated.

use ofx_diesel::Backend;
use ofx_diesel::state::StateSettings;

use crate::common::{Deposit, Host, Withdraw};

backend_tests! {
    append_on_a_is_current_on_b => sqlite_append_on_a_is_current_on_b, postgres_append_on_a_is_current_on_b;
}

async fn append_on_a_is_current_on_b<B: Backend>(url: &str) {
    let a = Host::<B>::open(url, StateSettings::default()).await;
    let b = Host::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    b.ready().await;
    assert_eq!(b.bank.balance("alice".into()).await, Ok(0));
    let position = a
        .hub()
        .commander()
        .call(Deposit {
            account: "alice".into(),
            amount: 10,
        })
        .await
        .unwrap();
    assert_eq!(position, 1);
    let view = b.state().current_state().await.unwrap();
    assert_eq!(view.position, 1);
    assert_eq!(view.balances.get("alice"), Some(&10));
    // B's cached balance was invalidated when B's state advanced.
    assert_eq!(b.bank.balance("alice".into()).await, Ok(10));
    let error = a
        .hub()
        .commander()
        .call(Withdraw {
            account: "alice".into(),
            amount: 11,
        })
        .await
        .unwrap_err();
    assert!(error.to_string().contains("insufficient"), "{error}");
    let position = b
        .hub()
        .commander()
        .call(Withdraw {
            account: "alice".into(),
            amount: 4,
        })
        .await
        .unwrap();
    assert_eq!(position, 2);
    let view = a.state().current_state().await.unwrap();
    assert_eq!(view.balances.get("alice"), Some(&6));
}
