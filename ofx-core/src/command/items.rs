//! [`OperationItems`]: what the main branch leaves for the invalidation branch, on every host.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// A type that can be stored in [`OperationItems`], under a key stable across builds and hosts.
///
/// ```
/// use ofx_core::OperationItem;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct TodoId(u64);
///
/// impl OperationItem for TodoId {
///     const KEY: &'static str = "todo.id";
/// }
/// ```
pub trait OperationItem: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The item's key in the operation log. Never derived from a type path, which changes when
    /// code moves.
    const KEY: &'static str;
}

/// A typed bag, one value per item type, serialized with the operation and handed to the
/// invalidation branch on every host.
///
/// Distinct from [`ContextItems`](crate::ContextItems), which never leave the executing host.
#[derive(Clone, Default)]
pub struct OperationItems {
    values: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
}

impl OperationItems {
    /// An empty bag.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bag holding `values`, as read from an operation log.
    pub fn from_json(values: BTreeMap<String, serde_json::Value>) -> Self {
        Self {
            values: Arc::new(Mutex::new(values)),
        }
    }

    fn values(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, serde_json::Value>> {
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `item`, replacing the item of the same type.
    ///
    /// # Errors
    /// [`Error::Item`] if the item cannot be serialized.
    pub fn set<T: OperationItem>(&self, item: T) -> Result<(), Error> {
        let value = serde_json::to_value(&item).map_err(|source| Error::Item {
            key: T::KEY,
            source: source.into(),
        })?;
        self.values().insert(T::KEY.to_owned(), value);
        Ok(())
    }

    /// The item of type `T`, if set and well formed. A malformed item is logged and reads as
    /// absent: use [`try_get`](Self::try_get) to see the error.
    pub fn get<T: OperationItem>(&self) -> Option<T> {
        match self.try_get() {
            Ok(item) => item,
            Err(error) => {
                tracing::warn!(%error, "malformed operation item");
                None
            }
        }
    }

    /// The item of type `T`, if set.
    ///
    /// # Errors
    /// [`Error::Item`] if the stored value does not decode as a `T`.
    pub fn try_get<T: OperationItem>(&self) -> Result<Option<T>, Error> {
        let Some(value) = self.values().get(T::KEY).cloned() else {
            return Ok(None);
        };
        serde_json::from_value(value)
            .map(Some)
            .map_err(|source| Error::Item {
                key: T::KEY,
                source: source.into(),
            })
    }

    /// Removes the item of type `T`.
    pub fn remove<T: OperationItem>(&self) {
        self.values().remove(T::KEY);
    }

    /// Whether the bag is empty.
    pub fn is_empty(&self) -> bool {
        self.values().is_empty()
    }

    /// A copy of the bag's contents, as stored in the log.
    pub fn to_json(&self) -> BTreeMap<String, serde_json::Value> {
        self.values().clone()
    }
}

impl std::fmt::Debug for OperationItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.values().iter()).finish()
    }
}
