use ofx_core::{Command, CommandContext, Hub, command_handler, service};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
struct AddTodo {
    title: String,
}

struct Todos {
    hub: Hub,
}

#[service]
impl Todos {
    #[command_handler]
    async fn add(&self, command: AddTodo, _ctx: &CommandContext) -> Result<u64, ofx_core::Error> {
        let _ = &self.hub;
        Ok(command.title.len() as u64)
    }
}

fn main() {}
