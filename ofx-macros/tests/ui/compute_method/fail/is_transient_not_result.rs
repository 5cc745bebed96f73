use ofx_core::{ComputeService, Hub, compute_method};

struct Users {
    hub: Hub,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

fn busy(_: &String) -> bool {
    true
}

impl Users {
    #[compute_method(is_transient = busy)]
    async fn count(&self) -> u64 {
        0
    }
}

fn main() {}
