use ofx_core::Command;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, Command)]
struct ImportHTTPFeed {
    url: String,
}

fn main() {}
