//! [`WatcherFactory`]: a watcher to start later, once per hub, with that hub's host id and
//! shutdown token (what a storage such as ofx-diesel's `DbHub::set_watcher` takes).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use ofx_core::{HostId, LogWatcher, LogWatcherFactory, ScopeFuture};
use tokio_util::sync::CancellationToken;

use crate::Result;

/// A watcher type that a [`WatcherFactory`] can start.
pub trait StartWatcher: LogWatcher + Sized {
    /// Where it connects: a directory, or a server URL.
    type Target: fmt::Debug + Clone + Send + Sync + 'static;

    /// Starts one for `host_id`, stopping on `stop`.
    fn start_for(
        target: Self::Target,
        log_name: String,
        host_id: HostId,
        stop: CancellationToken,
    ) -> impl Future<Output = Result<Arc<Self>>> + Send;
}

/// Starts a watcher of type `W` on `target` for the log `log_name`, once per hub it is
/// attached to. Made by `FsWatcher::factory`, `PgWatcher::factory`, `RedisWatcher::factory`.
pub struct WatcherFactory<W: StartWatcher> {
    target: W::Target,
    log_name: String,
}

impl<W: StartWatcher> WatcherFactory<W> {
    pub(crate) fn new(target: W::Target, log_name: &str) -> Self {
        Self {
            target,
            log_name: log_name.to_owned(),
        }
    }
}

impl<W: StartWatcher> fmt::Debug for WatcherFactory<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatcherFactory")
            .field("watcher", &std::any::type_name::<W>())
            .field("target", &self.target)
            .field("log_name", &self.log_name)
            .finish()
    }
}

impl<W: StartWatcher> LogWatcherFactory for WatcherFactory<W> {
    fn start(
        &self,
        host_id: HostId,
        stop: CancellationToken,
    ) -> ScopeFuture<'_, Result<Arc<dyn LogWatcher>, Box<dyn std::error::Error + Send + Sync>>>
    {
        let target = self.target.clone();
        let log_name = self.log_name.clone();
        Box::pin(async move {
            match W::start_for(target, log_name, host_id, stop).await {
                Ok(watcher) => Ok(watcher as Arc<dyn LogWatcher>),
                Err(error) => Err(Box::new(error) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

/// `Watcher::factory(target, log_name)` and the watcher's [`StartWatcher`] impl, for a watcher
/// whose `start(target, log_name, host_id, stop)` takes its target by reference.
#[cfg(any(feature = "fs", feature = "postgres", feature = "redis"))]
macro_rules! watcher_factory {
    ($watcher:ty, $target:ty, $arg:ident: $arg_ty:ty => $to_target:expr, $what:literal) => {
        impl $watcher {
            #[doc = concat!(
                "A watcher of the log `log_name` on ", $what, ", started later, once per hub, ",
                "with that hub's host id and shutdown token: give it to a storage (ofx-diesel's ",
                "`DbHub::set_watcher`). It fails the hub's start as [`start`](Self::start) fails."
            )]
            pub fn factory($arg: $arg_ty, log_name: &str) -> crate::WatcherFactory<Self> {
                crate::WatcherFactory::new($to_target, log_name)
            }
        }

        impl crate::StartWatcher for $watcher {
            type Target = $target;

            async fn start_for(
                target: Self::Target,
                log_name: String,
                host_id: ofx_core::HostId,
                stop: tokio_util::sync::CancellationToken,
            ) -> crate::Result<std::sync::Arc<Self>> {
                Self::start(&target, &log_name, host_id, stop).await
            }
        }
    };
}

#[cfg(any(feature = "fs", feature = "postgres", feature = "redis"))]
pub(crate) use watcher_factory;
