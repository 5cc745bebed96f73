//! Options, a `Result` output, several arguments, a dependency, and calling it all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ofx_core::{ComputeService, Hub, compute_method, invalidate};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound(pub u64);

pub struct Todos {
    hub: Hub,
    base: AtomicU64,
}

impl ComputeService for Todos {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Todos {
    /// No arguments, no options.
    #[compute_method]
    pub async fn base(&self) -> u64 {
        self.base.load(Ordering::SeqCst)
    }

    /// Several arguments, a dependency on `base`, and both options.
    #[compute_method(auto_invalidate = "5m", error_lifetime = "500ms")]
    pub async fn count(&self, owner: u64, tag: String, done: bool) -> u64 {
        self.base().await + owner + tag.len() as u64 + u64::from(done)
    }

    /// A `Result` output: an `Err` is cached for the error lifetime only.
    #[compute_method(error_lifetime = "2s")]
    pub(crate) async fn get(&self, id: u64) -> Result<Arc<str>, NotFound> {
        if id == 0 {
            Err(NotFound(id))
        } else {
            Ok(Arc::from(format!(
                "todo {}",
                self.count(id, String::new(), false).await
            )))
        }
    }

    /// A `Result` written through a path, and an `Option` argument.
    #[compute_method(auto_invalidate = "1h")]
    async fn touch(&self, id: Option<u64>) -> std::fmt::Result {
        let _ = id;
        Ok(())
    }

    /// No return type at all.
    #[compute_method]
    async fn nothing(&self) {}

    /// Other attributes are kept: lint attributes reach the body too.
    #[compute_method]
    #[allow(clippy::unused_async)]
    #[inline]
    async fn with_attributes(&self, key: (u64, String)) -> Vec<u64> {
        vec![key.0]
    }

    fn on_changed(&self, owner: u64) {
        invalidate! {
            self.base();
            self.count(owner, String::from("x"), true);
            self.get(owner);
            self.touch(Some(owner));
            self.nothing();
            self.with_attributes((owner, String::new()));
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let todos = Todos {
        hub: Hub::new().unwrap(),
        base: AtomicU64::new(10),
    };
    assert_eq!(todos.count(1, "ab".to_owned(), true).await, 14);
    assert_eq!(todos.get(0).await, Err(NotFound(0)));
    assert_eq!(todos.get(1).await.as_deref(), Ok("todo 11"));
    todos.touch(None).await.unwrap();
    todos.nothing().await;
    assert_eq!(todos.with_attributes((7, String::new())).await, vec![7]);

    todos.base.store(20, Ordering::SeqCst);
    assert_eq!(todos.get(1).await.as_deref(), Ok("todo 11"));
    todos.on_changed(1);
    assert_eq!(todos.get(1).await.as_deref(), Ok("todo 21"));
}
