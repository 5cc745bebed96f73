use ofx_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add", idempotent)]
struct AddTodo {
    title: String,
}

fn main() {}
