//! The built-in command filters, one module each. Their order is documented in
//! [`pipeline`](super::pipeline).

mod in_memory_scope;
mod invalidate_on_completion;
mod nested_operation_logger;

pub use in_memory_scope::{IN_MEMORY_OPERATION_SCOPE, InMemoryOperationScope};
pub use invalidate_on_completion::{INVALIDATE_ON_COMPLETION, InvalidateOnCompletion};
pub use nested_operation_logger::{NESTED_OPERATION_LOGGER, NestedOperationLogger};
