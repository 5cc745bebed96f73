use ofx_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "item.add")]
struct AddItem<T> {
    item: T,
}

fn main() {}
