//! The ledger's domain through its public API, on SQLite files (the ofx-diesel suites cover
//! PostgreSQL): refusals append nothing, hosts writing at once converge on the stream's
//! projection, and a host restarted from its snapshot has the same state.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use ledger::{Accounts, Deposit, Host, LedgerError, LedgerEvent, LedgerFiles, Receipt, Transfer};
use ofx_diesel::state::Projection;
use tokio::task::JoinSet;

const PATIENCE: Duration = Duration::from_secs(30);

/// The files of one test, removed when it ends (after its hosts, declared later, dropped).
struct Files(LedgerFiles);

impl Drop for Files {
    fn drop(&mut self) {
        self.0.remove();
    }
}

async fn ready_host(name: &str, files: &Files) -> Host {
    let host = Host::open(name, &files.0).await.unwrap();
    tokio::time::timeout(PATIENCE, host.ledger().ready())
        .await
        .expect("ready in time")
        .unwrap();
    host
}

async fn deposit(host: &Host, account: &str, amount: u64) -> Receipt {
    host.hub()
        .commander()
        .call(Deposit {
            account: account.into(),
            amount,
        })
        .await
        .unwrap()
}

fn transfer(from: &str, to: &str, amount: u64) -> Transfer {
    Transfer {
        from: from.into(),
        to: to.into(),
        amount,
    }
}

/// The ledger's error of a call that must fail.
async fn refusal(host: &Host, command: Transfer) -> LedgerError {
    let error = host.hub().commander().call(command).await.unwrap_err();
    LedgerError::of_call(&error)
        .unwrap_or_else(|| panic!("not a ledger error: {error}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_before_readiness_are_not_ready() {
    let files = Files(LedgerFiles::temporary());
    let prepared = Host::prepare("a", &files.0).await.unwrap();
    assert!(!prepared.ledger().is_ready());
    let error = prepared.ledger().local_state().await.unwrap_err();
    assert!(
        matches!(
            error,
            ofx_diesel::Error::NotReady {
                projection: "ledger"
            }
        ),
        "{error}"
    );
    let host = prepared.start().await.unwrap();
    tokio::time::timeout(PATIENCE, host.ledger().ready())
        .await
        .expect("ready in time")
        .unwrap();
    assert!(host.ledger().is_ready());
    assert_eq!(host.bank().balance("alice".into()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_beyond_the_balance_is_refused_and_appends_nothing() {
    let files = Files(LedgerFiles::temporary());
    let a = ready_host("a", &files).await;
    assert_eq!(deposit(&a, "alice", 10).await.position, 1);
    let before = a.ledger().current_state().await.unwrap();

    let refused = refusal(&a, transfer("alice", "bob", 11)).await;
    assert!(
        matches!(
            &refused,
            LedgerError::InsufficientFunds { account, balance: 10, amount: 11 } if account == "alice"
        ),
        "{refused}"
    );
    assert!(matches!(
        refusal(&a, transfer("alice", "bob", 0)).await,
        LedgerError::ZeroAmount
    ));
    assert!(matches!(
        refusal(&a, transfer("alice", "alice", 1)).await,
        LedgerError::SameAccount
    ));
    assert!(matches!(
        refusal(&a, transfer("carol", "alice", 1)).await,
        LedgerError::InsufficientFunds { balance: 0, .. }
    ));

    // Nothing reached the stream: the head is where it was, on this host and from scratch.
    let after = a.ledger().current_state().await.unwrap();
    assert_eq!((after.position, after.head), (1, 1));
    assert_eq!(*after.state, *before.state);
    let fresh = ledger::project_from_scratch(&files.0, PATIENCE)
        .await
        .unwrap();
    assert_eq!(fresh.position, 1);
    assert_eq!(*fresh.state, *before.state);
    assert_eq!(a.ledger().status().quarantined, 0);

    // The whole balance can go.
    let receipt = a
        .hub()
        .commander()
        .call(transfer("alice", "bob", 10))
        .await
        .unwrap();
    assert_eq!((receipt.position, receipt.balance), (2, 0));
    assert_eq!(a.bank().balance("bob".into()).await.unwrap(), 10);
}

/// What one caller on one host did: the transfers it asked for, with their outcomes.
type Outcomes = Vec<(Transfer, Result<Receipt, LedgerError>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_transferring_at_once_converge_on_the_projection_of_the_stream() {
    let files = Files(LedgerFiles::temporary());
    let a = ready_host("a", &files).await;
    let b = ready_host("b", &files).await;
    deposit(&a, "alice", 60).await;
    deposit(&b, "bob", 60).await;
    // Both hosts cache a balance, to see it follow.
    assert_eq!(a.bank().balance("alice".into()).await.unwrap(), 60);
    assert_eq!(b.bank().balance("alice".into()).await.unwrap(), 60);

    // Two callers per host, each moving money around three accounts in amounts that often
    // exceed what is left (overdraft checks race with each other across hosts), and once more
    // than the bank holds.
    let accounts = ["alice", "bob", "carol"];
    let mut callers = JoinSet::new();
    for (host, seed) in [(&a, 0_usize), (&a, 1), (&b, 2), (&b, 3)] {
        let commander = host.hub().commander();
        callers.spawn(async move {
            let mut outcomes: Outcomes = Vec::new();
            for round in 0..12 {
                let from = accounts[(seed + round) % 3];
                let to = accounts[(seed + round + 1 + seed % 2) % 3];
                let amount = if round == 6 {
                    121
                } else {
                    5 + ((seed * 7 + round * 11) % 23) as u64
                };
                let command = transfer(from, to, amount);
                let outcome = commander.call(command.clone()).await.map_err(|error| {
                    LedgerError::of_call(&error)
                        .unwrap_or_else(|| panic!("not a ledger error: {error}"))
                        .clone()
                });
                outcomes.push((command, outcome));
            }
            outcomes
        });
    }
    let mut accepted = BTreeMap::new();
    let mut refused = 0;
    while let Some(outcomes) = callers.join_next().await {
        for (command, outcome) in outcomes.unwrap() {
            match outcome {
                Ok(receipt) => {
                    assert!(
                        accepted
                            .insert(receipt.position, (command, receipt))
                            .is_none(),
                        "two transfers at position {}",
                        receipt.position
                    );
                }
                Err(LedgerError::InsufficientFunds {
                    balance, amount, ..
                }) => {
                    assert!(balance < amount);
                    refused += 1;
                }
                Err(error) => panic!("unexpected refusal: {error}"),
            }
        }
    }
    assert!(refused >= 4, "the transfers of 121 are refused");
    assert!(!accepted.is_empty());

    // The accepted transfers hold the positions after the two deposits, densely; replayed in
    // that order, each left the balance its receipt says: it was decided at the stream's head.
    let last = 2 + accepted.len() as u64;
    assert_eq!(
        accepted.keys().copied().collect::<Vec<_>>(),
        (3..=last).collect::<Vec<_>>()
    );
    let mut expected = Accounts::default();
    let deposits = [("alice", 1), ("bob", 2)].map(|(account, position)| {
        (
            position,
            LedgerEvent::Deposited {
                account: account.into(),
                amount: 60,
            },
        )
    });
    for (position, event) in deposits {
        ledger::Ledger
            .apply(&mut expected, event, position)
            .unwrap();
    }
    for (position, (command, receipt)) in &accepted {
        let event = LedgerEvent::Transferred {
            from: command.from.clone(),
            to: command.to.clone(),
            amount: command.amount,
        };
        ledger::Ledger
            .apply(&mut expected, event, *position)
            .unwrap();
        assert_eq!(receipt.balance, expected.balance(&command.from));
    }
    assert_eq!(expected.total(), 120);

    // Every host's state, and a projection of the whole stream, are that state.
    let on_a = a.ledger().current_state().await.unwrap();
    let on_b = b.ledger().current_state().await.unwrap();
    let fresh = ledger::project_from_scratch(&files.0, PATIENCE)
        .await
        .unwrap();
    for view in [&on_a, &on_b, &fresh] {
        assert_eq!(view.position, last);
        assert_eq!(*view.state, expected);
    }
    // And so are the cached balances, invalidated as the states advanced.
    for account in accounts {
        assert_eq!(
            a.bank().balance(account.into()).await.unwrap(),
            expected.balance(account)
        );
        assert_eq!(
            b.bank().balance(account.into()).await.unwrap(),
            expected.balance(account)
        );
    }
    assert_eq!(a.ledger().status().quarantined, 0);
    assert_eq!(b.ledger().status().quarantined, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarted_from_its_snapshot_has_the_same_state() {
    let files = Files(LedgerFiles::temporary());
    let a = ready_host("a", &files).await;
    let b = ready_host("b", &files).await;
    deposit(&a, "alice", 100).await;
    deposit(&b, "bob", 40).await;
    a.hub()
        .commander()
        .call(transfer("alice", "bob", 25))
        .await
        .unwrap();
    b.ledger().current_state().await.unwrap();

    // The follower saves a snapshot of its own once its state first advanced, in the
    // background; the state service offers nothing to await it, so poll the status until it
    // is done, so that it cannot land over the one saved below.
    tokio::time::timeout(PATIENCE, async {
        while b.ledger().status().saved_snapshot.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first snapshot saved in time");
    let saved = b.ledger().save_snapshot().await.unwrap();
    assert_eq!(saved, Some(3));
    let before = b.ledger().local_state().await.unwrap();
    assert!(b.shutdown(PATIENCE).await.is_some(), "host B stopped");

    // B comes back from its snapshot alone: the same state at the same position.
    let b = ready_host("b", &files).await;
    let status = b.ledger().status();
    assert_eq!(status.loaded_snapshot, Some(3));
    assert_eq!(status.position, 3);
    let restarted = b.ledger().local_state().await.unwrap();
    assert_eq!(*restarted.state, *before.state);
    assert!(b.shutdown(PATIENCE).await.is_some(), "host B stopped");

    // B comes back from its snapshot, then catches up with what A appended meanwhile.
    deposit(&a, "carol", 7).await;
    a.hub()
        .commander()
        .call(transfer("bob", "carol", 60))
        .await
        .unwrap();
    let b = ready_host("b", &files).await;
    let status = b.ledger().status();
    assert_eq!(status.loaded_snapshot, Some(3));
    assert_eq!((status.position, status.head, status.lag_events), (5, 5, 0));
    let on_b = b.ledger().current_state().await.unwrap();
    let on_a = a.ledger().current_state().await.unwrap();
    let fresh = ledger::project_from_scratch(&files.0, PATIENCE)
        .await
        .unwrap();
    assert_eq!(*on_b.state, *on_a.state);
    assert_eq!(*on_b.state, *fresh.state);
    assert_eq!(
        (
            on_b.balance("alice"),
            on_b.balance("bob"),
            on_b.balance("carol")
        ),
        (75, 5, 67)
    );
    assert_eq!(b.bank().balance("carol".into()).await.unwrap(), 67);
}
