//! Control flow and logging inside `invalidate!`, and compute methods of another service
//! invalidated through a field.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use ofx_core::{ComputeService, Hub, compute_method, invalidate};

pub struct Users {
    hub: Hub,
    version: AtomicU64,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Users {
    #[compute_method]
    pub async fn get(&self, id: u64) -> String {
        format!("user {id} v{}", self.version.load(Ordering::SeqCst))
    }
}

pub enum Change {
    Renamed { id: u64 },
    Moved { from: u64, to: u64 },
    Cleared,
}

pub struct Todos {
    hub: Hub,
    users: Users,
}

impl ComputeService for Todos {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Todos {
    #[compute_method]
    pub async fn count(&self, owner: u64) -> usize {
        self.users.get(owner).await.len()
    }

    #[compute_method]
    pub async fn by_owner(&self, owner: u64, done: bool) -> BTreeMap<u64, bool> {
        BTreeMap::from([(owner, done)])
    }

    pub fn on_change(&self, change: &Change, maybe_owner: Option<u64>, owners: &[u64]) {
        invalidate! {
            tracing::debug!("invalidating after a change");
            let first = owners.first().copied().unwrap_or_default();
            self.count(first);
            if let Some(owner) = maybe_owner {
                self.count(owner);
                self.users.get(owner);
            } else if first > 0 {
                self.by_owner(first, true);
            } else {
                ();
            }
            match change {
                Change::Renamed { id } => self.users.get(*id),
                Change::Moved { from, to } => {
                    self.by_owner(*from, false);
                    self.by_owner(*to, false);
                }
                Change::Cleared => {}
            }
            for &owner in owners {
                self.count(owner);
                eprintln!("invalidated count({owner})");
            }
            {
                let users = &self.users;
                (users.get(first));
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let todos = Todos {
        hub: Hub::new().unwrap(),
        users: Users {
            hub: Hub::new().unwrap(),
            version: AtomicU64::new(1),
        },
    };
    assert_eq!(todos.users.get(7).await, "user 7 v1");
    assert_eq!(todos.count(7).await, 9);
    todos.users.version.store(22, Ordering::SeqCst);
    assert_eq!(todos.count(7).await, 9);
    todos.on_change(&Change::Renamed { id: 7 }, None, &[]);
    assert_eq!(todos.users.get(7).await, "user 7 v22");
    assert_eq!(todos.count(7).await, 10);
}
