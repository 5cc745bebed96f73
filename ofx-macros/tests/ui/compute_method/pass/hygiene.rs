//! Modules and types named like the crates and prelude items the expansion uses do not break
//! it: generated code names everything by absolute path.

#![allow(dead_code, non_camel_case_types)]

mod core {}
mod std {}
mod serde {}
mod inventory {}
mod tokio {}
mod tracing {}
mod __private {}
// `::ofx_core` is the extern crate even beside a local module of that name; the user's own
// imports say `::ofx_core` to tell the two apart.
mod ofx_core {}

struct Option;
struct Some;
struct None;
struct Ok;
struct Err;
struct Box;
struct Vec;
struct String;
struct Duration;
struct Hub;
trait Clone {}
trait Send {}
trait Sync {}
trait Hash {}
trait Future {}
trait ComputeService {}
trait ComputeKey {}
trait ComputeOutput {}
struct ComputeMethodDescriptor;
struct ComputeMethodOptions;
struct DESCRIPTOR;
fn compute() {}
fn invalidate() {}

struct Users {
    hub: ::ofx_core::Hub,
}

impl ::ofx_core::ComputeService for Users {
    fn hub(&self) -> &::ofx_core::Hub {
        &self.hub
    }
}

impl Users {
    #[::ofx_core::compute_method(auto_invalidate = "5s", error_lifetime = "100ms")]
    async fn name(&self, id: u64) -> ::std::result::Result<::std::string::String, u8> {
        ::std::result::Result::Ok(::std::format!("user {id}"))
    }

    #[::ofx_core::compute_method]
    async fn greeting(&self, id: u64, self_: u64) -> ::std::string::String {
        let name = self.name(id).await.unwrap_or_default();
        ::std::format!("{name} {self_}")
    }

    fn forget(&self, id: u64) {
        ::ofx_core::invalidate! {
            self.name(id);
            self.greeting(id, 0);
        }
    }
}

fn main() {
    let _ = Users::forget;
}
