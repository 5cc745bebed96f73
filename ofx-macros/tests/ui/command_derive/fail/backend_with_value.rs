use ofx_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "todo.purge", backend = true)]
struct PurgeTodos;

fn main() {}
