//! [`HubExtension`]: how a storage or a transport adds itself to a hub in one step.

use crate::operation::ScopeFuture;
use crate::{Error, Hub};

/// Something that attaches to a hub when it starts: a storage (ofx-diesel's `DbHub` starts its
/// log reader and trimmer, and its watcher with the hub's host id and shutdown token), an
/// event processor, a state follower. Added with [`HubBuilder::with`](crate::HubBuilder::with)
/// and attached, in the order added, by [`HubBuilder::start`](crate::HubBuilder::start), so
/// that wiring a host is one expression whose order cannot be wrong:
///
/// ```
/// use ofx_core::{Error, Hub, HubExtension, ScopeFuture};
///
/// #[derive(Debug)]
/// struct Hello;
///
/// impl HubExtension for Hello {
///     fn name(&self) -> &'static str { "hello" }
///
///     fn attach<'a>(&'a self, hub: &'a Hub) -> ScopeFuture<'a, Result<(), Error>> {
///         Box::pin(async move {
///             // Background work stops on `hub.shutdown_token()`; state lives in
///             // `hub.attachment(..)`.
///             hub.attachment("hello", || 42_u32);
///             Ok(())
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let hub = Hub::builder().with(Hello).start().await?;
/// assert_eq!(*hub.attachment("hello", || 0_u32), 42);
/// assert!(Hub::builder().with(Hello).build().is_err()); // extensions attach in `start`
/// # Ok(()) }
/// ```
pub trait HubExtension: Send + Sync + 'static {
    /// The extension's name, for errors and logs.
    fn name(&self) -> &'static str;

    /// Attaches to `hub`: starts background work (stopping on
    /// [`Hub::shutdown_token`](crate::Hub::shutdown_token), holding the hub weakly) and keeps
    /// state in [`Hub::attachment`](crate::Hub::attachment).
    ///
    /// # Errors
    /// [`Error::Extension`] when it cannot start.
    fn attach<'a>(&'a self, hub: &'a Hub) -> ScopeFuture<'a, Result<(), Error>>;
}
