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

    fn on_renamed(&self, name: &str) {
        invalidate! {
            self.get(name);
        }
    }
}

fn main() {}
