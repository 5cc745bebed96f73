//! `current_state()`: it sees every append committed before the call, from any host, or fails
//! `Unavailable` after its timeout; `local_state()` never fails once ready; the status and the
//! views stay consistent while appends stream in; compute methods are fresh after quiescence.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ofx_diesel::Error;
use ofx_diesel::state::{StateSettings, UnavailableCause};

use crate::common::{Deposit, Withdraw};
use crate::kit::{Rig, Sql, allow_conflict, deaf, fresh_ledger, head, until, until_async, within};

backend_tests! {
    current_sees_every_append_committed_before_the_call =>
        sqlite_current_sees_every_append_committed_before_the_call,
        postgres_current_sees_every_append_committed_before_the_call;
    current_right_after_a_commit_on_the_other_host =>
        sqlite_current_right_after_a_commit_on_the_other_host,
        postgres_current_right_after_a_commit_on_the_other_host;
    cancelled_current_state_calls_do_not_starve_the_others =>
        sqlite_cancelled_current_state_calls_do_not_starve_the_others,
        postgres_cancelled_current_state_calls_do_not_starve_the_others;
    status_and_views_stay_consistent_while_appends_stream_in =>
        sqlite_status_and_views_stay_consistent_while_appends_stream_in,
        postgres_status_and_views_stay_consistent_while_appends_stream_in;
    compute_methods_are_fresh_after_quiescence =>
        sqlite_compute_methods_are_fresh_after_quiescence,
        postgres_compute_methods_are_fresh_after_quiescence;
}

/// Writers on both hosts; readers on a host that never polls call `current_state()` after
/// reading the stream's head on a connection of their own: each view must reach that head.
async fn current_sees_every_append_committed_before_the_call<B: Sql>(url: &str) {
    let a = Arc::new(Rig::<B>::open(url, StateSettings::default()).await);
    let b = Arc::new(Rig::<B>::open(url, deaf()).await);
    a.ready().await;
    b.ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (index, rig) in [&a, &a, &b, &b].into_iter().enumerate() {
        let rig = Arc::clone(rig);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut done = 0_u32;
            while !stop.load(Ordering::SeqCst) && done < 200 {
                allow_conflict(
                    rig.commander()
                        .call(Deposit {
                            account: format!("w{index}"),
                            amount: 1,
                        })
                        .await,
                );
                done += 1;
            }
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        let a = Arc::clone(&a);
        let b = Arc::clone(&b);
        readers.push(tokio::spawn(async move {
            for _ in 0..25 {
                let committed = head(&a.db, "ledger").await;
                let view = b.ledger().current_state().await.unwrap();
                assert!(
                    view.position >= committed,
                    "current_state() returned position {} but {committed} was committed \
                     before the call",
                    view.position
                );
                assert_eq!(
                    view.state.last_position, view.position,
                    "the view's state is not the state at its position"
                );
                assert_eq!(view.state.applied, view.position);
                assert!(
                    view.head >= view.position,
                    "view head {} < position {}",
                    view.head,
                    view.position
                );
                assert_eq!(view.lag_events, view.head - view.position);
            }
        }));
    }
    for reader in readers {
        within(Duration::from_secs(40), "readers", reader)
            .await
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
}

/// A commit returns on one host; `current_state()` on the other (which never polls) must see
/// it, both ways, every time.
async fn current_right_after_a_commit_on_the_other_host<B: Sql>(url: &str) {
    let a = Rig::<B>::open(url, deaf()).await;
    let b = Rig::<B>::open(url, deaf()).await;
    a.ready().await;
    b.ready().await;
    for round in 0..40 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let position = writer
            .commander()
            .call(Deposit {
                account: "x".into(),
                amount: 1,
            })
            .await
            .unwrap();
        let view = reader.ledger().current_state().await.unwrap();
        assert!(
            view.position >= position,
            "round {round}: position {position} committed on one host, current_state() on the \
             other returned {}",
            view.position
        );
        assert_eq!(
            view.balances.get("x"),
            Some(&i64::try_from(position).unwrap())
        );
    }
}

/// Callers of `current_state()` share a refresh: callers dropped at every point must not leave
/// the others waiting, nor blind.
async fn cancelled_current_state_calls_do_not_starve_the_others<B: Sql>(url: &str) {
    let a = Rig::<B>::open(url, deaf()).await;
    let b = Rig::<B>::open(url, deaf()).await;
    a.ready().await;
    b.ready().await;
    for round in 0..20_u64 {
        a.commander()
            .call(Deposit {
                account: "x".into(),
                amount: 1,
            })
            .await
            .unwrap();
        let committed = head(&a.db, "ledger").await;
        let mut kept = Vec::new();
        for caller in 0..12_u64 {
            let ledger = b.ledger().clone();
            let task = tokio::spawn(async move { ledger.current_state().await });
            if caller % 2 == 0 {
                // Cancelled at various points: right away, or after a few hundred µs.
                if caller % 4 != 0 {
                    tokio::time::sleep(Duration::from_micros(round * 50)).await;
                }
                task.abort();
            } else {
                kept.push(task);
            }
        }
        for task in kept {
            let view = within(Duration::from_secs(6), "a kept current_state()", task)
                .await
                .unwrap()
                .unwrap();
            assert!(
                view.position >= committed,
                "round {round}: saw {} of {committed}",
                view.position
            );
        }
    }
    let view = within(
        Duration::from_secs(6),
        "current_state() after cancellations",
        b.ledger().current_state(),
    )
    .await
    .unwrap();
    assert_eq!(view.position, head(&a.db, "ledger").await);
}

/// `status()` and views sampled while appends stream in: position ≤ head, lag = head -
/// position, views never half-applied; at quiescence, caught up at the head.
async fn status_and_views_stay_consistent_while_appends_stream_in<B: Sql>(url: &str) {
    let a = Arc::new(Rig::<B>::open(url, StateSettings::default()).await);
    let b = Rig::<B>::open(url, StateSettings::default()).await;
    a.ready().await;
    b.ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for index in 0..3 {
        let a = Arc::clone(&a);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while !stop.load(Ordering::SeqCst) && done < 150 {
                allow_conflict(
                    a.commander()
                        .call(Deposit {
                            account: format!("s{index}"),
                            amount: 1,
                        })
                        .await,
                );
                done += 1;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut samples = 0_u64;
    while Instant::now() < deadline {
        let status = b.ledger().status();
        assert!(status.ready);
        assert!(
            status.position <= status.head,
            "status position {} > head {}: {status:?}",
            status.position,
            status.head
        );
        assert_eq!(
            status.lag_events,
            status.head - status.position,
            "lag_events is not head - position: {status:?}"
        );
        // `caught_up` with a lag is checked in `broken.rs` (it breaks).
        assert!(status.lag_seconds.is_some(), "{status:?}");
        assert!(status.last_refresh_age_seconds.is_some(), "{status:?}");
        let view = b.ledger().local_state().await.unwrap();
        assert!(view.position <= view.head, "view position > head");
        assert_eq!(view.lag_events, view.head - view.position);
        assert_eq!(view.state.applied, view.position, "a half-applied view");
        samples += 1;
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(samples > 100, "only {samples} samples");
    let committed = head(&a.db, "ledger").await;
    let view = b.ledger().current_state().await.unwrap();
    assert_eq!(view.position, committed);
    until(Duration::from_secs(5), "B caught up at the head", || {
        let status = b.ledger().status();
        status.caught_up
            && status.position == committed
            && status.head == committed
            && status.lag_events == 0
    })
    .await;
}

/// Two hosts, four writers each (deposits and withdrawals, some refused), compute methods read
/// all along (local and current state); once every host caught up, every cached value is the
/// fresh projection's.
async fn compute_methods_are_fresh_after_quiescence<B: Sql>(url: &str) {
    let a = Arc::new(Rig::<B>::open(url, StateSettings::default()).await);
    let b = Arc::new(Rig::<B>::open(url, StateSettings::default()).await);
    a.ready().await;
    b.ready().await;
    let accounts = ["p", "q", "r"];
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for rig in [&a, &b] {
        let rig = Arc::clone(rig);
        let stop = Arc::clone(&stop);
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for account in accounts {
                    let _ = rig.attack.local_balance(account.into()).await;
                    let _ = rig.attack.current_balance(account.into()).await;
                    let _ = rig.bank.balance(account.into()).await;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut writers = Vec::new();
    for (index, rig) in [&a, &a, &a, &a, &b, &b, &b, &b].into_iter().enumerate() {
        let rig = Arc::clone(rig);
        writers.push(tokio::spawn(async move {
            for step in 0..12_usize {
                let account = accounts[(index + step) % 3].to_owned();
                if step % 3 == 2 {
                    // May be refused (insufficient funds): that is fine.
                    let _ = rig.commander().call(Withdraw { account, amount: 2 }).await;
                } else {
                    allow_conflict(rig.commander().call(Deposit { account, amount: 1 }).await);
                }
            }
        }));
    }
    for writer in writers {
        within(Duration::from_secs(40), "writers", writer)
            .await
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    // Quiescence: every host's follower has applied the whole stream.
    let committed = head(&a.db, "ledger").await;
    for rig in [&a, &b] {
        until_async(Duration::from_secs(10), "the host caught up", || async {
            rig.ledger().local_state().await.unwrap().position == committed
        })
        .await;
    }
    let fresh = fresh_ledger(&a.db).await;
    for (name, rig) in [("A", &a), ("B", &b)] {
        let view = rig.ledger().local_state().await.unwrap();
        assert_eq!(
            *view.state, fresh,
            "host {name}'s state is not the fresh projection"
        );
        for account in accounts {
            let expected = fresh.balances.get(account).copied().unwrap_or(0);
            assert_eq!(
                rig.attack.local_balance(account.into()).await,
                Ok((expected, committed)),
                "host {name}: a compute method reading local_state() is stale after quiescence"
            );
            assert_eq!(
                rig.attack.current_balance(account.into()).await,
                Ok((expected, committed)),
                "host {name}: a compute method reading current_state() is stale after quiescence"
            );
            assert_eq!(
                rig.bank.balance(account.into()).await,
                Ok(expected),
                "host {name}: the bank's balance is stale after quiescence"
            );
        }
    }
}

postgres_tests! {
    current_state_fails_unavailable_on_a_stalled_database_and_recovers =>
        postgres_current_state_fails_unavailable_on_a_stalled_database_and_recovers;
    the_follower_survives_the_database_going_away =>
        postgres_the_follower_survives_the_database_going_away;
}

#[cfg(feature = "postgres")]
async fn current_state_fails_unavailable_on_a_stalled_database_and_recovers(url: &str) {
    use crate::proxy::{Mode, Proxy};
    let a = Rig::<ofx_diesel::Postgres>::open(url, StateSettings::default()).await;
    let proxy = Proxy::start(url).await;
    let b = Rig::<ofx_diesel::Postgres>::open(proxy.url(), deaf()).await;
    a.ready().await;
    b.ready().await;
    a.commander()
        .call(Deposit {
            account: "x".into(),
            amount: 1,
        })
        .await
        .unwrap();
    proxy.set(Mode::Stall);
    let started = Instant::now();
    let error = within(
        Duration::from_secs(3),
        "current_state_within(500 ms) on a stalled database",
        b.ledger().current_state_within(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, Error::Unavailable { .. }),
        "expected Unavailable, got {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let local = within(
        Duration::from_millis(500),
        "local_state() on a stalled database",
        b.ledger().local_state(),
    )
    .await
    .expect("local_state() never fails once ready");
    assert_eq!(local.position, 0);
    proxy.set(Mode::Pass);
    let view = within(
        Duration::from_secs(10),
        "current_state() after the stall",
        async {
            loop {
                if let Ok(view) = b.ledger().current_state().await {
                    return view;
                }
                // Paces the retries of a deadline loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert_eq!(view.position, 1);
}

#[cfg(feature = "postgres")]
async fn the_follower_survives_the_database_going_away(url: &str) {
    use crate::proxy::{Mode, Proxy};
    let a = Rig::<ofx_diesel::Postgres>::open(url, StateSettings::default()).await;
    let proxy = Proxy::start(url).await;
    let mut settings = StateSettings::default();
    settings.retry_max = Duration::from_millis(300);
    let b = Rig::<ofx_diesel::Postgres>::open(proxy.url(), settings).await;
    a.ready().await;
    b.ready().await;
    proxy.set(Mode::Down);
    for _ in 0..3 {
        a.commander()
            .call(Deposit {
                account: "x".into(),
                amount: 1,
            })
            .await
            .unwrap();
    }
    let error = within(
        Duration::from_secs(4),
        "current_state_within(1 s) with the database away",
        b.ledger().current_state_within(Duration::from_secs(1)),
    )
    .await
    .unwrap_err();
    match &error {
        Error::Unavailable { cause, .. } => {
            assert!(
                matches!(
                    cause,
                    UnavailableCause::Failing(_) | UnavailableCause::Stalled
                ),
                "{error}"
            );
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(b.ledger().local_state().await.is_ok());
    until(Duration::from_secs(5), "last_error set", || {
        b.ledger().status().last_error.is_some()
    })
    .await;
    assert!(b.ledger().is_ready());
    assert!(!b.ledger().health().crashed());
    proxy.set(Mode::Pass);
    let view = within(
        Duration::from_secs(15),
        "current_state() once back",
        async {
            loop {
                if let Ok(view) = b.ledger().current_state().await {
                    return view;
                }
                // Paces the retries of a deadline loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
    assert_eq!(view.position, 3);
    until(Duration::from_secs(5), "last_error cleared", || {
        b.ledger().status().last_error.is_none()
    })
    .await;
    // B writes again (its pool reconnects).
    let position = within(Duration::from_secs(15), "B appends once back", async {
        loop {
            if let Ok(position) = b
                .commander()
                .call(Deposit {
                    account: "x".into(),
                    amount: 1,
                })
                .await
            {
                return position;
            }
            // Paces the retries of a deadline loop.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(position, 4);
    assert_eq!(fresh_ledger(&a.db).await.balances.get("x"), Some(&4));
}
