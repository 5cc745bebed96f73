//! A consolidating method in a generic impl, with two arguments.

use std::marker::PhantomData;

use ofx_core::{ComputeService, Hub, compute_method};

struct Totals<B> {
    hub: Hub,
    backend: PhantomData<fn() -> B>,
}

impl<B: 'static> ComputeService for Totals<B> {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl<B: 'static> Totals<B> {
    #[compute_method(consolidate)]
    async fn total(&self, owner: u64, open: bool) -> Result<u64, String> {
        Ok(owner + u64::from(open))
    }
}

fn main() {
    let totals = Totals::<u8> {
        hub: Hub::new().unwrap(),
        backend: PhantomData,
    };
    let _ = totals.total(1, true);
}
