//! Modules and types named like the crates and prelude items the expansion uses do not break
//! `#[service]` and `#[derive(Command)]`: generated code names everything by absolute path.
//! Handlers and compute methods named like the methods of the traits `#[service]` implements
//! (`handle`, `invalidate`, `call`, `descriptor`) are called as the user's methods.

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
struct PhantomData;
struct Service;
struct ServiceHandlers;
struct ComputeMethodDescriptor;
trait CommandHandler {}
trait ComputeMethod {}
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
fn handler_result() {}

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

    #[::ofx_core::compute_method]
    async fn call(&self, __ofx_service: u64, __ofx_args: u64) -> u64 {
        __ofx_service + __ofx_args
    }

    #[::ofx_core::compute_method]
    async fn descriptor(&self) -> u64 {
        0
    }

    #[::ofx_core::command_handler]
    async fn handle(
        &self,
        command: Add,
        ctx: &::ofx_core::CommandContext,
    ) -> ::core::result::Result<::std::vec::Vec<u64>, Refused> {
        ::ofx_core::invalidate! {
            self.count(command.owner);
            self.call(command.owner, 1);
            self.descriptor();
        }
        let _ = ctx.command_name();
        ::core::result::Result::Ok(::std::vec![command.owner])
    }

    #[::ofx_core::command_handler]
    async fn invalidate(
        &self,
        __ofx_command: Clear,
        __ofx_ctx: &::ofx_core::CommandContext,
    ) -> ::core::result::Result<
        (),
        ::std::boxed::Box<dyn ::std::error::Error + ::core::marker::Send + ::core::marker::Sync>,
    > {
        ::ofx_core::invalidate! {
            let _ = (&__ofx_command, __ofx_ctx.command_name());
            self.descriptor();
        }
        ::core::result::Result::Ok(())
    }
}

fn main() {
    let _ = Users::handle;
    let _ = Users::invalidate;
    let _ = Users::call_method();
    let _ = Users::descriptor_method();
}
