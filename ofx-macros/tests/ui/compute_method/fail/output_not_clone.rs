use ofx_core::{ComputeService, Hub, compute_method};

struct Users {
    hub: Hub,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

struct Stats {
    count: u64,
}

impl Users {
    #[compute_method]
    async fn stats(&self) -> Stats {
        Stats { count: 0 }
    }
}

fn main() {}
