use ofx_core::{
    Command, CommandContext, ComputeService, Hub, command_handler, compute_method, invalidate,
    service,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
struct AddTodo {
    title: String,
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
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
    #[compute_method]
    async fn count(&self) -> u64 {
        0
    }

    #[command_handler]
    async fn add(&self, command: AddTodo, _ctx: &CommandContext) -> Result<u64, Refused> {
        let length = command.title.len() as u64;
        invalidate! {
            self.count();
        }
        Ok(length)
    }
}

fn main() {}
