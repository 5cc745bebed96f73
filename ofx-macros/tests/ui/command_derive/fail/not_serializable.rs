use ofx_core::Command;

#[derive(Clone, Command)]
#[command(output = u64, name = "todo.add")]
struct AddTodo {
    title: String,
}

fn main() {}
