use ofx_core::{ComputeService, Hub, compute_method, service};

#[derive(Clone, PartialEq, Eq)]
struct Filter {
    text: String,
}

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
    async fn count(&self, filter: Filter, limit: u64) -> u64 {
        filter.text.len() as u64 + limit
    }
}

fn main() {}
