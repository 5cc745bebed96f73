use ofx_core::{Command, CommandContext, ComputeService, Hub, command_handler, service};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
struct AddTodo {
    title: String,
}

/// Not an `std::error::Error`.
#[derive(Debug)]
struct Refused;

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
    async fn add(&self, command: AddTodo, _ctx: &CommandContext) -> Result<u64, Refused> {
        if command.title.is_empty() {
            return Err(Refused);
        }
        Ok(command.title.len() as u64)
    }
}

fn main() {}
