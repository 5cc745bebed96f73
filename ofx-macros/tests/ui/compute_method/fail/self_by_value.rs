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
    async fn count(self, owner: u64) -> u64 {
        owner
    }
}

fn main() {}
