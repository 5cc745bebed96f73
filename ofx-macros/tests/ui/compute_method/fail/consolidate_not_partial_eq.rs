use std::sync::Arc;

use ofx_core::{ComputeService, Hub, compute_method};

struct Reports {
    hub: Hub,
}

impl ComputeService for Reports {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

#[derive(Clone)]
struct Report {
    lines: Vec<String>,
}

impl Reports {
    #[compute_method(consolidate)]
    async fn report(&self, day: u32) -> Arc<Report> {
        Arc::new(Report {
            lines: vec![day.to_string()],
        })
    }
}

fn main() {}
