use ofx_core::{ComputeService, Hub, compute_method, service};

/// The user's own type, named like the type `#[service]` makes for `Users::get`.
struct UsersGetMethod;

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
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {
    let _ = UsersGetMethod;
}
