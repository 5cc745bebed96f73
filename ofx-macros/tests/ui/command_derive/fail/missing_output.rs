use ofx_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Command)]
#[command(name = "todo.add")]
struct AddTodo {
    title: String,
}

fn main() {}
