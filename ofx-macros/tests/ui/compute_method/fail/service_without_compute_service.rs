use ofx_core::compute_method;

struct Users;

impl Users {
    #[compute_method]
    async fn count(&self) -> u64 {
        0
    }
}

fn main() {}
