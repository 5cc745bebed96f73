//! A generic service (`#[service] impl<B: Backend> Store<B>`): its commands run and replay on
//! two hubs with two type arguments, one hub routes a command to one service, and its compute
//! methods are values.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ofx_core::{
    Command, CommandContext, ComputeMethod, ComputeService, Error, Hub, Operation, Service,
    capture, command_handler, compute_method, invalidate, service,
};
use serde::{Deserialize, Serialize};

/// Where a store keeps its values.
pub(crate) trait Backend: Send + Sync + 'static {
    fn read(&self, key: u64) -> Option<String>;
    fn write(&self, key: u64, value: String) -> Option<String>;
}

/// Values in a map.
#[derive(Default)]
pub(crate) struct Memory(Mutex<HashMap<u64, String>>);

impl Backend for Memory {
    fn read(&self, key: u64) -> Option<String> {
        self.0.lock().unwrap().get(&key).cloned()
    }

    fn write(&self, key: u64, value: String) -> Option<String> {
        self.0.lock().unwrap().insert(key, value)
    }
}

/// Values in a map, and every key written.
#[derive(Default)]
pub(crate) struct Logged {
    values: Memory,
    writes: Mutex<Vec<u64>>,
}

impl Backend for Logged {
    fn read(&self, key: u64) -> Option<String> {
        self.values.read(key)
    }

    fn write(&self, key: u64, value: String) -> Option<String> {
        self.writes.lock().unwrap().push(key);
        self.values.write(key, value)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<String>, name = "store.put")]
pub(crate) struct Put {
    key: u64,
    value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "store.touch")]
pub(crate) struct Touch {
    key: u64,
}

pub(crate) struct Store<B> {
    hub: Hub,
    backend: B,
    /// What the invalidation branches ran: `(command, key)`.
    invalidations: Mutex<Vec<(&'static str, u64)>>,
}

impl<B: Backend> ComputeService for Store<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

/// Records that an invalidation branch ran.
macro_rules! record {
    ($service:expr, $command:expr, $key:expr) => {
        $service
            .invalidations
            .lock()
            .unwrap()
            .push(($command, $key))
    };
}

#[service]
impl<B: Backend> Store<B> {
    #[compute_method]
    pub(crate) async fn get(&self, key: u64) -> Option<String> {
        self.backend.read(key)
    }

    #[compute_method]
    pub(crate) async fn len(&self, key: u64) -> usize {
        self.get(key).await.map_or(0, |value| value.len())
    }

    #[command_handler]
    pub(crate) async fn put(
        &self,
        command: Put,
        _ctx: &CommandContext,
    ) -> Result<Option<String>, Error> {
        invalidate! {
            self.get(command.key);
            record!(self, "put", command.key);
        }
        Ok(self.backend.write(command.key, command.value))
    }

    #[command_handler]
    pub(crate) async fn touch(&self, command: Touch, _ctx: &CommandContext) -> Result<(), Error> {
        invalidate! {
            self.get(command.key);
            record!(self, "touch", command.key);
        }
        Ok(())
    }
}

/// A store on a hub of its own, and the operations the hub completed.
fn store<B: Backend + Default>() -> (Arc<Store<B>>, Arc<Mutex<Vec<Operation>>>) {
    let operations = Arc::new(Mutex::new(Vec::new()));
    let hub = Hub::builder()
        .completion_listener(Collect(operations.clone()))
        .build()
        .unwrap();
    let store = Arc::new(Store {
        hub: hub.clone(),
        backend: B::default(),
        invalidations: Mutex::new(Vec::new()),
    });
    hub.add_service(&store).unwrap();
    (store, operations)
}

struct Collect(Arc<Mutex<Vec<Operation>>>);

impl ofx_core::operation::CompletionListener for Collect {
    fn on_operation_completed(&self, operation: &Operation, _local: bool) {
        self.0.lock().unwrap().push(operation.clone());
    }
}

#[tokio::test]
async fn a_generic_service_runs_and_replays_on_two_hubs_with_two_type_arguments() {
    let (memory, memory_operations) = store::<Memory>();
    let (logged, logged_operations) = store::<Logged>();
    let (_, on_memory) = capture(memory.len(1)).await.unwrap();
    let (_, on_logged) = capture(logged.len(1)).await.unwrap();

    let previous = memory
        .hub
        .commander()
        .call(Put {
            key: 1,
            value: "one".to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(previous, None);
    assert!(!on_memory.is_consistent(), "read-your-writes");
    assert_eq!(memory.len(1).await, 3);
    assert!(on_logged.is_consistent(), "another hub, not replayed yet");

    let operation = memory_operations.lock().unwrap()[0].clone();
    let operation = Operation::from_json(&operation.to_json().unwrap()).unwrap();
    assert!(logged.hub.commander().replay(operation).await.unwrap());
    assert!(
        !on_logged.is_consistent(),
        "the replay invalidated `Store<Logged>::get` and what was computed from it"
    );
    assert!(
        logged.backend.writes.lock().unwrap().is_empty(),
        "no main branch"
    );
    assert_eq!(*logged.invalidations.lock().unwrap(), [("put", 1)]);

    // And the other way: a command of `Store<Logged>` replayed on the `Store<Memory>` hub.
    logged.hub.commander().call(Touch { key: 1 }).await.unwrap();
    let operation = logged_operations.lock().unwrap()[1].clone();
    assert!(memory.hub.commander().replay(operation).await.unwrap());
    assert_eq!(
        *memory.invalidations.lock().unwrap(),
        [("put", 1), ("touch", 1)]
    );
}

#[tokio::test]
async fn two_services_handling_one_command_on_one_hub_are_an_error() {
    let (memory, _) = store::<Memory>();
    let other = Arc::new(Store {
        hub: memory.hub.clone(),
        backend: Logged::default(),
        invalidations: Mutex::new(Vec::new()),
    });
    let error = memory.hub.add_service(&other).unwrap_err();
    let Error::DuplicateHandler {
        command,
        first,
        second,
    } = &error
    else {
        panic!("unexpected error: {error:?}");
    };
    assert!(["store.put", "store.touch"].contains(command), "{command}");
    assert!(
        first.ends_with("generic::Store<commander::generic::Memory>"),
        "{first}"
    );
    assert!(
        second.ends_with("generic::Store<commander::generic::Logged>"),
        "{second}"
    );
    let message = error.to_string();
    assert!(
        message.contains(first) && message.contains(second),
        "{message}"
    );

    // Nothing of the refused service was added: both commands still reach the first.
    memory.hub.commander().call(Touch { key: 2 }).await.unwrap();
    assert_eq!(*memory.invalidations.lock().unwrap(), [("touch", 2)]);
    assert!(other.invalidations.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_service_of_the_same_type_replaces_the_first_and_a_dropped_one_gives_way() {
    let (first, _) = store::<Memory>();
    let hub = first.hub.clone();
    let second = Arc::new(Store {
        hub: hub.clone(),
        backend: Memory::default(),
        invalidations: Mutex::new(Vec::new()),
    });
    hub.add_service(&second).unwrap();
    hub.commander().call(Touch { key: 3 }).await.unwrap();
    assert!(first.invalidations.lock().unwrap().is_empty());
    assert_eq!(*second.invalidations.lock().unwrap(), [("touch", 3)]);

    // Once dropped, a service no longer holds its commands.
    drop(first);
    drop(second);
    let error = hub.commander().call(Touch { key: 3 }).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::ServiceDropped {
                command: "store.touch",
                ..
            }
        ),
        "{error:?}"
    );
    let logged = Arc::new(Store {
        hub: hub.clone(),
        backend: Logged::default(),
        invalidations: Mutex::new(Vec::new()),
    });
    hub.add_service(&logged).unwrap();
    hub.commander().call(Touch { key: 4 }).await.unwrap();
    assert_eq!(*logged.invalidations.lock().unwrap(), [("touch", 4)]);
}

#[tokio::test]
async fn a_service_is_added_to_its_own_hub_only() {
    let (memory, _) = store::<Memory>();
    let other = Hub::new().unwrap();
    let error = other.add_service(&memory).unwrap_err();
    assert!(
        matches!(&error, Error::ServiceOfAnotherHub { service } if service.ends_with("generic::Store<commander::generic::Memory>")),
        "{error:?}"
    );
    assert!(matches!(
        other.commander().call(Touch { key: 1 }).await,
        Err(Error::NoHandler {
            command: "store.touch"
        })
    ));
}

#[tokio::test]
async fn compute_methods_are_values_that_invalidate_by_arguments_and_are_listed() {
    let (memory, _) = store::<Memory>();
    memory.backend.write(5, "five".to_owned());
    let (len, computed) = capture(memory.len(5)).await.unwrap();
    assert_eq!(len, 4);

    let get = Store::<Memory>::get_method();
    assert_eq!(get.call(&memory, (5,)).await.as_deref(), Some("five"));
    get.invalidate(&memory, &(6,));
    assert!(
        computed.is_consistent(),
        "only the value of those arguments"
    );
    get.invalidate(&memory, &(5,));
    assert!(
        !computed.is_consistent(),
        "`len(5)` was computed from `get(5)`"
    );

    let methods = <Store<Memory> as Service>::compute_methods();
    let names: Vec<&str> = methods.iter().map(|method| method.name()).collect();
    assert_eq!(names.len(), 2);
    assert!(names[0].ends_with("generic::Store::get"), "{names:?}");
    assert!(names[1].ends_with("generic::Store::len"), "{names:?}");
    assert!(std::ptr::eq(methods[0], get.descriptor()));
    assert!(std::ptr::eq(
        methods[1],
        Store::<Logged>::len_method().descriptor()
    ));

    // Calls and computations, counted per method (for every hub and type argument: compare
    // before and after).
    let len_method = Store::<Memory>::len_method().descriptor();
    let (calls, computations) = (len_method.calls(), len_method.computations());
    assert_eq!(memory.len(5).await, 4);
    assert_eq!(memory.len(5).await, 4);
    assert!(len_method.calls() >= calls + 2);
    assert!(len_method.computations() > computations);
    assert!(len_method.computations() <= len_method.calls());
}
