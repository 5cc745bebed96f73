use ofx_core::{Command, CommandContext, ComputeService, Hub, command_handler, service};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Command)]
#[command(output = u64, name = "todo.add")]
struct AddTodo {
    title: String,
}

#[derive(Debug, thiserror::Error)]
#[error("refused")]
struct Refused;

struct Todos<T> {
    hub: Hub,
    store: T,
}

impl<T: Send + Sync + 'static> ComputeService for Todos<T> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl<T: Send + Sync + 'static> Todos<T> {
    #[command_handler]
    async fn add(&self, command: AddTodo, _ctx: &CommandContext) -> Result<u64, Refused> {
        let _ = &self.store;
        Ok(command.title.len() as u64)
    }
}

fn main() {}
