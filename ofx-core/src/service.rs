//! [`ComputeService`]: how a compute method finds its hub.

use crate::Hub;

/// A type whose `impl` blocks hold `#[compute_method]`s.
///
/// Compute methods cache their results in the [`Hub`] this trait returns. A hub caches one value
/// per method and argument set, so a hub should hold one instance of each service type (as a
/// dependency-injection singleton would); two instances of the same type on one hub share their
/// cache.
///
/// ```
/// use ofx_core::{ComputeService, Hub};
///
/// struct Users { hub: Hub }
///
/// impl ComputeService for Users {
///     fn hub(&self) -> &Hub { &self.hub }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has compute methods but does not implement `ofx_core::ComputeService`",
    label = "compute methods need to know their hub",
    note = "add `impl ofx_core::ComputeService for {Self} {{ fn hub(&self) -> &ofx_core::Hub {{ &self.hub }} }}`"
)]
pub trait ComputeService: Send + Sync + 'static {
    /// The hub that caches this service's compute methods.
    fn hub(&self) -> &Hub;
}
