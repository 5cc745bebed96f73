use std::sync::Arc;

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
    async fn count(&self) -> u64 {
        0
    }
}

fn main() {
    let hub = Hub::new().unwrap();
    let users = Arc::new(Users { hub: hub.clone() });
    hub.add_service(&users).unwrap();
}
