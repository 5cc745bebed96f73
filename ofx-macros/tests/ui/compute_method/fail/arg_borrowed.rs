use ofx_core::{ComputeService, Hub, compute_method};

struct Users {
    hub: Hub,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Users {
    #[compute_method]
    async fn find(&self, name: &str) -> u64 {
        name.len() as u64
    }
}

fn main() {}
