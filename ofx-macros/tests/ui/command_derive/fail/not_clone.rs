use ofx_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
struct AddTodo {
    title: String,
}

fn main() {}
