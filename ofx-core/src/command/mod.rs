//! Commands: serializable requests that change state, their handlers, and the registry that
//! decodes them from the operation log by name.

mod context;
pub(crate) mod handler;
mod items;
#[doc(hidden)]
pub mod registry;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use context::{CallKind, CommandContext, ContextItems};
pub use handler::{CommandHandler, ServiceHandlers};
pub use items::{OperationItem, OperationItems};
pub use registry::{BoxedOutput, CommandFuture, CommandRegistration, ErasedCommand};

/// A request that changes state. Derive it with `#[derive(Command)]`:
///
/// ```
/// use ofx_core::Command;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Command)]
/// #[command(output = u64, name = "todo.add")]
/// struct AddTodo { title: String }
///
/// assert_eq!(<AddTodo as Command>::NAME, "todo.add");
/// ```
///
/// The **name** is the command's identity in the operation log, read by every host: keep it
/// stable when the type moves or is renamed. Two command types with one name are refused when a
/// hub starts. The derive also registers the command's decoder under its name (in a registry
/// closed at compile time): that is how other hosts replay it, so implement this trait with the
/// derive, never by hand. A **backend** command (`#[command(backend)]`) may not come from a client: see
/// [`Commander::call_from_client`](crate::Commander::call_from_client).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "a command handler's first argument is its command",
    note = "derive it: `#[derive(Clone, Serialize, Deserialize, ofx_core::Command)]` with `#[command(output = T, name = \"...\")]`"
)]
pub trait Command: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What a successful call returns.
    type Output: Send + 'static;
    /// The stable name of the command in the operation log.
    const NAME: &'static str;
    /// Whether the command may only be called by the backend itself, never for a client.
    const BACKEND: bool = false;
}
