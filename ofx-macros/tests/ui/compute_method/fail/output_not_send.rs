use ofx_core::{ComputeService, Hub, compute_method};

struct Users {
    hub: Hub,
}

impl ComputeService for Users {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

use std::rc::Rc;

impl Users {
    #[compute_method]
    async fn count(&self) -> Rc<u64> {
        Rc::new(0)
    }
}

fn main() {}
