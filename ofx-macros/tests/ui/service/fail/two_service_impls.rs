use ofx_core::{ComputeService, Hub, compute_method, service};

struct Users {
    hub: Hub,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[service]
impl Users {
    #[compute_method]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

#[service]
impl Users {
    #[compute_method]
    async fn count(&self) -> u64 {
        0
    }
}

fn main() {}
