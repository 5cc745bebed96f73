//! Commit fault hooks: hold commits just before COMMIT, delay them at random, or make them fail
//! at COMMIT (a deferred constraint), so that indexes are drawn, held and burnt at will.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use ofx_diesel::{DbHub, Postgres};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};

/// Holds the next `n` commits of a host just before their COMMIT (their operation rows
/// inserted, their indexes drawn) until released.
pub(crate) struct Gate {
    to_hold: AtomicUsize,
    reached: mpsc::UnboundedSender<()>,
    release: Semaphore,
}

impl Gate {
    /// Installs a gate on `db`; the receiver gets one message per commit held.
    pub(crate) fn install(db: &DbHub<Postgres>) -> (Arc<Self>, mpsc::UnboundedReceiver<()>) {
        let (reached, receiver) = mpsc::unbounded_channel();
        let gate = Arc::new(Self {
            to_hold: AtomicUsize::new(0),
            reached,
            release: Semaphore::new(0),
        });
        let hook_gate = Arc::clone(&gate);
        db.set_commit_fault(Some(Arc::new(
            move |_connection: &mut AsyncPgConnection| {
                let gate = Arc::clone(&hook_gate);
                Box::pin(async move {
                    let hold = gate
                        .to_hold
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if hold {
                        gate.reached.send(()).unwrap();
                        gate.release.acquire().await.unwrap().forget();
                    }
                })
            },
        )));
        (gate, receiver)
    }

    /// Holds the next `n` commits.
    pub(crate) fn hold(&self, n: usize) {
        self.to_hold.store(n, Ordering::SeqCst);
    }

    /// Lets `n` held commits go on.
    pub(crate) fn release(&self, n: usize) {
        self.release.add_permits(n);
    }
}

/// The table whose deferred unique constraint makes a COMMIT fail: inserting the same key twice
/// before COMMIT burns the operation's index.
pub(crate) const BURN_TABLE: &str =
    "CREATE TABLE burn (k INT, CONSTRAINT burn_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)";

/// A hook that delays a share of commits by up to `max_delay` (after their indexes are drawn)
/// and makes a share fail at COMMIT.
pub(crate) fn chaotic_commits(db: &DbHub<Postgres>, max_delay: Duration, burn_percent: u32) {
    db.set_commit_fault(Some(Arc::new(move |connection: &mut AsyncPgConnection| {
        Box::pin(async move {
            let (delay, burn) = {
                let mut rng = rand::rng();
                let delay = if rng.random_ratio(1, 2) {
                    Some(rng.random_range(Duration::ZERO..max_delay))
                } else {
                    None
                };
                (delay, rng.random_ratio(burn_percent, 100))
            };
            if burn {
                connection
                    .batch_execute("INSERT INTO burn VALUES (1), (1)")
                    .await
                    .unwrap();
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
        })
    })));
}
