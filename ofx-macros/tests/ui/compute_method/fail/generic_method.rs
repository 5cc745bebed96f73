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
    async fn count<K: std::hash::Hash>(&self, owner: K) -> u64 {
        let _ = owner;
        0
    }
}

fn main() {}
