//! Modules and types named like the crates and prelude items the expansion uses do not break
//! `#[service]` and `#[derive(Command)]`: generated code names everything by absolute path.

#![allow(dead_code, non_camel_case_types)]

mod core {}
mod std {}
mod serde {}
mod inventory {}
mod tokio {}
mod __private {}
// `::ofx_core` is the extern crate even beside a local module of that name.
mod ofx_core {}

struct Option;
struct Some;
struct None;
struct Ok;
struct Err;
struct Box;
struct Vec;
struct String;
struct Result;
struct Any;
struct TypeId;
struct Hub;
struct CommandContext;
struct ErasedCommand;
struct CommandFuture;
struct HandlerRegistration;
struct CommandRegistration;
trait Clone {}
trait Send {}
trait Sync {}
trait Command {}
trait Future {}
trait ComputeService {}
fn downcast() {}
fn handler_future() {}
fn decode_command() {}
fn encode_command() {}
fn assert_command() {}
fn assert_handler_result() {}
fn invalidate() {}
fn __ofx_run() {}
fn __ofx_invalidate() {}

#[derive(::core::clone::Clone, ::serde::Serialize, ::serde::Deserialize, ::ofx_core::Command)]
#[command(output = ::std::vec::Vec<u64>, name = "hygiene.add")]
struct Add {
    owner: u64,
}

#[derive(::core::clone::Clone, ::serde::Serialize, ::serde::Deserialize, ::ofx_core::Command)]
#[command(output = (), name = "hygiene.clear", backend)]
struct Clear;

#[derive(::core::fmt::Debug)]
struct Refused;

impl ::core::fmt::Display for Refused {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        f.write_str("refused")
    }
}

impl ::std::error::Error for Refused {}

struct Users {
    hub: ::ofx_core::Hub,
}

impl ::ofx_core::ComputeService for Users {
    fn hub(&self) -> &::ofx_core::Hub {
        &self.hub
    }
}

#[::ofx_core::service]
impl Users {
    #[::ofx_core::compute_method]
    async fn count(&self, owner: u64) -> u64 {
        owner
    }

    #[::ofx_core::command_handler]
    async fn add(
        &self,
        command: Add,
        ctx: &::ofx_core::CommandContext,
    ) -> ::core::result::Result<::std::vec::Vec<u64>, Refused> {
        ::ofx_core::invalidate! {
            self.count(command.owner);
        }
        let _ = ctx.command_name();
        ::core::result::Result::Ok(::std::vec![command.owner])
    }

    #[::ofx_core::command_handler]
    async fn clear(
        &self,
        _command: Clear,
        _ctx: &::ofx_core::CommandContext,
    ) -> ::core::result::Result<
        (),
        ::std::boxed::Box<dyn ::std::error::Error + ::core::marker::Send + ::core::marker::Sync>,
    > {
        ::core::result::Result::Ok(())
    }
}

fn main() {
    let _ = Users::add;
    let _ = Users::clear;
}
