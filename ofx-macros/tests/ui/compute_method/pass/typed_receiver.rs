//! `self: &Self` is the same receiver as `&self`.

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
    async fn count(self: &Self) -> u64 {
        self.hub.cached_len() as u64
    }
}

fn main() {
    let _ = Users { hub: Hub::new().unwrap() }.count();
}
