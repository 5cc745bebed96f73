use std::rc::Rc;

use ofx_core::{ComputeService, Hub, compute_method, service};

struct Users {
    hub: Hub,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

async fn load(id: u64) -> u64 {
    id
}

#[service]
impl Users {
    #[compute_method]
    async fn score(&self, id: u64) -> u64 {
        let local = Rc::new(id);
        load(*local).await + *local
    }
}

fn main() {}
