use ofx_core::{ComputeService, Hub, compute_method};

struct Files {
    hub: Hub,
}

impl ComputeService for Files {
    fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Files {
    #[compute_method]
    async fn size(&self, path: String) -> Result<u64, std::io::Error> {
        std::fs::metadata(path).map(|metadata| metadata.len())
    }
}

fn main() {}
