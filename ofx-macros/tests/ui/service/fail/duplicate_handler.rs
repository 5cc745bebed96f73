use ofx_core::{Command, CommandContext, ComputeService, Hub, command_handler, service};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
struct AddTodo {
    title: String,
}

struct Todos {
    hub: Hub,
}

impl ComputeService for Todos {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Todos {
    #[command_handler]
    async fn add(&self, command: AddTodo, _ctx: &CommandContext) -> Result<u64, ofx_core::Error> {
        Ok(command.title.len() as u64)
    }

    #[command_handler]
    async fn add_again(
        &self,
        command: AddTodo,
        _ctx: &CommandContext,
    ) -> Result<u64, ofx_core::Error> {
        Ok(command.title.len() as u64)
    }
}

fn main() {}
