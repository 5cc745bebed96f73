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

    async fn owner_of(&self, id: u64) -> u64 {
        id
    }

    async fn on_deleted(&self, id: u64) {
        invalidate! {
            let owner = self.owner_of(id).await;
            self.get(owner);
        }
    }
}

fn main() {}
