//! A generic service, `#[service] impl<B> Store<B> where B: Backend`, with handlers and compute
//! methods (one whose argument names the `impl`'s parameter, one whose argument names `Self`),
//! used with two type arguments, each on its own hub; and its compute methods as values.

#![deny(warnings)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ofx_core::{
    Command, CommandContext, ComputeMethod, ComputeService, Hub, Service, command_handler,
    compute_method, invalidate, service,
};
use serde::{Deserialize, Serialize};

/// Where a store keeps its values.
pub trait Backend: Send + Sync + 'static {
    /// How this backend tags a value.
    type Tag: std::hash::Hash + Eq + Clone + std::fmt::Debug + Send + Sync + 'static;

    /// The value under `key`.
    fn read(&self, key: u64) -> Option<String>;

    /// Replaces the value under `key`, returning the previous one.
    fn write(&self, key: u64, value: String) -> Option<String>;
}

/// Values in a map.
#[derive(Default)]
pub struct Memory(Mutex<HashMap<u64, String>>);

impl Backend for Memory {
    type Tag = u8;

    fn read(&self, key: u64) -> Option<String> {
        self.0.lock().unwrap().get(&key).cloned()
    }

    fn write(&self, key: u64, value: String) -> Option<String> {
        self.0.lock().unwrap().insert(key, value)
    }
}

/// Values in a map, and every key written.
#[derive(Default)]
pub struct Logged {
    values: Memory,
    log: Mutex<Vec<u64>>,
}

impl Backend for Logged {
    type Tag = String;

    fn read(&self, key: u64) -> Option<String> {
        self.values.read(key)
    }

    fn write(&self, key: u64, value: String) -> Option<String> {
        self.log.lock().unwrap().push(key);
        self.values.write(key, value)
    }
}

/// Stores a value; returns the previous one.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>, name = "store.put")]
pub struct Put {
    pub key: u64,
    pub value: String,
}

/// Forgets nothing, but invalidates everything of one key.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "store.touch", backend)]
pub struct Touch {
    pub key: u64,
}

/// What a store is keyed by, through a trait (so that a compute method can name `Self`).
pub trait Keyed {
    /// The key.
    type Key;
}

/// A store over a backend.
pub struct Store<B> {
    hub: Hub,
    backend: B,
}

impl<B: Backend> Keyed for Store<B> {
    type Key = u64;
}

impl<B: Backend> ComputeService for Store<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<B> Store<B>
where
    B: Backend,
{
    /// The value under `key`.
    #[compute_method]
    pub async fn get(&self, key: <Self as Keyed>::Key) -> Option<String> {
        self.backend.read(key)
    }

    /// The value under `key`, tagged.
    #[compute_method]
    pub async fn tagged(&self, key: u64, tag: B::Tag) -> Option<(String, B::Tag)> {
        self.get(key).await.map(|value| (value, tag))
    }

    #[command_handler]
    pub async fn put(
        &self,
        command: Put,
        _ctx: &CommandContext,
    ) -> Result<Option<String>, ofx_core::Error> {
        invalidate! {
            self.get(command.key);
        }
        Ok(self.backend.write(command.key, command.value))
    }

    #[command_handler]
    async fn touch(&self, command: Touch, _ctx: &CommandContext) -> Result<(), ofx_core::Error> {
        invalidate! {
            self.get(command.key);
        }
        Ok(())
    }
}

/// Runs the same scenario on a store over any backend.
async fn scenario<B: Backend + Default>(tag: B::Tag) -> Arc<Store<B>> {
    let hub = Hub::new().unwrap();
    let store = Arc::new(Store {
        hub: hub.clone(),
        backend: B::default(),
    });
    hub.add_service(&store).unwrap();
    assert_eq!(store.get(1).await, None);
    assert_eq!(store.tagged(1, tag.clone()).await, None);
    let previous = hub
        .commander()
        .call(Put {
            key: 1,
            value: "one".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(previous, None);
    // Invalidated before `call` returned, with what was computed from it.
    assert_eq!(store.get(1).await.as_deref(), Some("one"));
    assert_eq!(
        store.tagged(1, tag.clone()).await,
        Some(("one".to_owned(), tag.clone()))
    );

    // The compute methods as values: called with an argument tuple, invalidated by one.
    let get = Store::<B>::get_method();
    assert_eq!(get.call(&store, (1,)).await.as_deref(), Some("one"));
    store.backend.write(1, "uno".to_owned());
    assert_eq!(get.call(&store, (1,)).await.as_deref(), Some("one"));
    get.invalidate(&store, &(1,));
    assert_eq!(store.get(1).await.as_deref(), Some("uno"));
    let tagged: TaggedMethod<B> = Store::<B>::tagged_method();
    assert_eq!(
        tagged.call(&store, (1, tag.clone())).await,
        Some(("uno".to_owned(), tag))
    );

    hub.commander().call(Touch { key: 1 }).await.unwrap();
    store
}

/// The type of a compute method, named.
type TaggedMethod<B> = StoreTaggedMethod<Store<B>>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let memory = scenario::<Memory>(7).await;
    let logged = scenario::<Logged>("blue".to_owned()).await;
    assert_eq!(
        *logged.backend.log.lock().unwrap(),
        [1, 1],
        "the command, then the test"
    );
    assert!(!memory.hub().ptr_eq(logged.hub()));

    let methods = Store::<Memory>::compute_methods();
    assert_eq!(methods.len(), 2);
    assert!(
        methods[0].name().ends_with("Store::get"),
        "{}",
        methods[0].name()
    );
    assert!(methods[1].name().ends_with("Store::tagged"));
    // One descriptor per method, whatever the type argument.
    assert!(std::ptr::eq(
        methods[0],
        Store::<Logged>::get_method().descriptor()
    ));
    assert!(methods[0].calls() >= 8);

    // Both type arguments handle `Put`: one hub takes one of them.
    let error = memory
        .hub()
        .add_service(&Arc::new(Store {
            hub: memory.hub().clone(),
            backend: Logged::default(),
        }))
        .unwrap_err();
    assert!(
        matches!(
            error,
            ofx_core::Error::DuplicateHandler {
                command: "store.put",
                ..
            }
        ),
        "{error}"
    );
}
