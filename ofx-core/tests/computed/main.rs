use ofx_core::{ComputeService, Hub, compute_method, invalidate};
use std::sync::atomic::{AtomicU64, Ordering};

struct Prices {
    hub: Hub,
    base: AtomicU64,
    runs: AtomicU64,
}
impl ComputeService for Prices {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}
impl Prices {
    #[compute_method]
    async fn base(&self) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.base.load(Ordering::SeqCst)
    }
    #[compute_method(error_lifetime = "2s")]
    pub async fn with_tax(&self, percent: u64) -> Result<u64, String> {
        Ok(self.base().await * (100 + percent) / 100)
    }
}

#[tokio::test]
async fn smoke() {
    let p = Prices {
        hub: Hub::new(),
        base: AtomicU64::new(100),
        runs: AtomicU64::new(0),
    };
    assert_eq!(p.with_tax(20).await, Ok(120));
    p.base.store(200, Ordering::SeqCst);
    assert_eq!(p.with_tax(20).await, Ok(120));
    invalidate! { p.base(); }
    assert_eq!(p.with_tax(20).await, Ok(240));
    assert_eq!(p.runs.load(Ordering::SeqCst), 2);
}
