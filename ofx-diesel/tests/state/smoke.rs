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

/// The state's metrics after a known sequence: two events applied, one quarantined. The
/// recorder is installed for this test's thread, on a current-thread runtime (the follower
/// runs on it too).
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_the_state_publishes_its_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use ofx_diesel::telemetry;

    use crate::common::{AppendRaw, BankEvent};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let url = crate::common::sqlite_file().await;
    let host = Host::<ofx_diesel::Sqlite>::open(&url, StateSettings::default()).await;
    host.ready().await;
    let deposit = BankEvent::Deposited {
        account: "alice".into(),
        amount: 5,
    };
    let events = vec![deposit.clone(), BankEvent::Poison, deposit];
    host.hub()
        .commander()
        .call(AppendRaw { events })
        .await
        .unwrap();
    // A refresh that ends after the call: the follower publishes its metrics as it ends one.
    assert_eq!(host.state().current_state().await.unwrap().position, 3);

    let snapshot = snapshotter.snapshot().into_vec();
    let host_id = host.hub().host_id().to_string();
    let value = |name: &str| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                let mut labels: Vec<(&str, &str)> = key
                    .labels()
                    .map(|label| (label.key(), label.value()))
                    .collect();
                labels.sort_unstable();
                key.name() == name
                    && labels == [("host", host_id.as_str()), ("projection", "ledger")]
            })
            .map(|(_, _, _, value)| value)
    };
    assert_eq!(
        value(telemetry::STATE_EVENTS_APPLIED),
        Some(&DebugValue::Counter(2))
    );
    assert_eq!(
        value(telemetry::STATE_QUARANTINED),
        Some(&DebugValue::Counter(1))
    );
    assert_eq!(
        value(telemetry::STATE_POSITION),
        Some(&DebugValue::Gauge(3.0.into()))
    );
    assert_eq!(
        value(telemetry::STATE_LAG_EVENTS),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    assert_eq!(
        value(telemetry::STATE_READY),
        Some(&DebugValue::Gauge(1.0.into()))
    );
}
