//! Outputs of several shapes, the `backend` flag, a trailing comma, and reading it all back.

use ofx_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    pub id: u64,
    pub title: String,
}

/// A plain output.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
pub struct AddTodo {
    pub title: String,
}

/// A generic type as output: no quoting needed.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Vec<Todo>, name = "todo.import")]
pub struct ImportTodos {
    pub titles: Vec<String>,
}

/// The unit output, on a unit struct, and the backend flag.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = (), name = "todo.purge", backend)]
pub struct PurgeTodos;

/// An `Option` output, options in another order, and a trailing comma.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(name = "todo.find", output = Option<u64>,)]
pub struct FindTodo {
    pub title: String,
}

/// An enum command with a path output holding a tuple.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = std::sync::Arc<[(u64, String)]>, name = "todo.bulk", backend)]
pub enum Bulk {
    Complete(u64),
    Rename { id: u64, title: String },
}

/// A generic output with two parameters: its comma does not end the option.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = std::collections::HashMap<u64, Vec<(String, bool)>>, name = "todo.by_owner")]
pub struct ByOwner;

/// A function pointer output: the `>` of its `->` closes nothing.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<fn(Vec<u8>) -> Result<u64, String>>, name = "todo.parser", backend)]
pub struct Parser;

/// A tuple struct with a nested generic output.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = Option<Vec<std::sync::Arc<str>>>, name = "todo.title")]
pub struct Title(pub u64);

fn output_of<C: Command>(_: &C) -> &'static str {
    std::any::type_name::<C::Output>()
}

fn main() {
    assert_eq!(AddTodo::NAME, "todo.add");
    assert!(!AddTodo::BACKEND);
    assert_eq!(<ImportTodos as Command>::NAME, "todo.import");
    assert!(PurgeTodos::BACKEND);
    assert_eq!(FindTodo::NAME, "todo.find");
    assert!(!FindTodo::BACKEND);
    assert!(Bulk::BACKEND);
    assert_eq!(Title::NAME, "todo.title");

    let imported: <ImportTodos as Command>::Output = vec![Todo {
        id: 1,
        title: "a".to_owned(),
    }];
    assert_eq!(imported.len(), 1);
    let purged: <PurgeTodos as Command>::Output = ();
    let found: <FindTodo as Command>::Output = Some(3);
    assert_eq!((purged, found), ((), Some(3)));
    assert_eq!(
        output_of(&AddTodo {
            title: String::new()
        }),
        "u64"
    );
    assert_eq!(output_of(&PurgeTodos), "()");
}
