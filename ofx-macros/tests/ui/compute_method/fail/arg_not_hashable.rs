use ofx_core::{ComputeService, Hub, compute_method};

struct Users {
    hub: Hub,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[derive(Clone, PartialEq, Eq)]
struct Filter {
    owner: u64,
}

impl Users {
    #[compute_method]
    async fn count(&self, filter: Filter) -> u64 {
        filter.owner
    }
}

fn main() {}
