use ofx_core::{ComputeService, Hub, compute_method, invalidate};

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
    async fn get(&self, id: u64) -> u64 {
        id
    }

    fn clear(&self, id: u64) {
        let _ = id;
    }

    fn on_deleted(&self, id: u64) {
        invalidate! {
            self.get(id);
            self.clear(id);
        }
    }
}

fn main() {}
