//! [`Ofx`]: the state the routes share, and the extractors that read it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use ofx_core::{ComputeService, Error, Hub};
use tokio_util::sync::CancellationToken;

/// The limits and timings of the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OfxSettings {
    /// The largest command body accepted, in bytes: a larger one is refused with 413 before it
    /// is read whole. Default: 256 KiB.
    pub max_command_body: usize,
    /// How often a live stream sends a keep-alive comment while its value does not change (so
    /// that proxies keep the connection open and a dead client is noticed). Default: 15 s.
    pub keep_alive: Duration,
    /// The `retry:` a live stream tells its client: how long a browser waits before it
    /// reconnects after the connection dropped. Default: 1 s.
    pub reconnect_after: Duration,
}

impl Default for OfxSettings {
    fn default() -> Self {
        Self {
            max_command_body: 256 * 1024,
            keep_alive: Duration::from_secs(15),
            reconnect_after: Duration::from_secs(1),
        }
    }
}

/// What ofx's routes share: the hub, the services by type, the settings, and the shutdown
/// signal that ends every live stream. A cheap handle (an `Arc`); use it as (or inside) your
/// router's state, with [`OfxService`] and [`OfxHub`] to extract from it.
#[derive(Clone)]
pub struct Ofx {
    inner: Arc<Inner>,
}

struct Inner {
    classify: Option<Classifier>,
    hub: Hub,
    services: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    settings: OfxSettings,
    shutdown: CancellationToken,
}

impl Ofx {
    /// A builder for the state of `hub`'s routes.
    pub fn builder(hub: &Hub) -> OfxBuilder {
        OfxBuilder {
            classify: None,
            hub: hub.clone(),
            services: HashMap::new(),
            settings: OfxSettings::default(),
            shutdown: None,
        }
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The service of type `S` given to the builder, if any.
    pub fn service<S: ComputeService>(&self) -> Option<Arc<S>> {
        let service = self.inner.services.get(&TypeId::of::<S>())?;
        Arc::clone(service).downcast::<S>().ok()
    }

    /// The settings.
    pub fn settings(&self) -> &OfxSettings {
        &self.inner.settings
    }

    /// Ends every live stream of these routes (each ends cleanly, after the frame it is
    /// sending), and refuses new ones: what a server calls when it shuts down, so that
    /// `axum::serve(..).with_graceful_shutdown(..)` does not wait forever for streams that
    /// never end. Commands still run.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Whether [`shutdown`](Self::shutdown) was called (or the token given to
    /// [`OfxBuilder::shutdown_on`] was cancelled).
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The answer the application chose for `error`, if any.
    pub(crate) fn classify(&self, error: &Error) -> Option<ErrorAnswer> {
        self.inner
            .classify
            .as_ref()
            .and_then(|classify| classify(error))
    }
}

impl fmt::Debug for OfxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfxBuilder")
            .field("host", self.hub.host_id())
            .field("services", &self.services.len())
            .field("settings", &self.settings)
            .field("classify_errors", &self.classify.is_some())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Ofx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ofx")
            .field("host", self.inner.hub.host_id())
            .field("services", &self.inner.services.len())
            .field("settings", &self.inner.settings)
            .field("shut_down", &self.is_shut_down())
            .finish()
    }
}

/// How a command error of the application's is answered: see
/// [`OfxBuilder::classify_errors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorAnswer {
    /// The status.
    pub status: StatusCode,
    /// The `error` field of the JSON body (`message` is the error's text).
    pub kind: &'static str,
}

type Classifier = Arc<dyn Fn(&Error) -> Option<ErrorAnswer> + Send + Sync>;

/// Builds an [`Ofx`].
pub struct OfxBuilder {
    classify: Option<Classifier>,
    hub: Hub,
    services: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    settings: OfxSettings,
    shutdown: Option<CancellationToken>,
}

impl OfxBuilder {
    /// Adds a service, for [`OfxService<S>`] to extract. One per type: a second one of the
    /// same type replaces the first.
    #[must_use]
    pub fn service<S: ComputeService>(mut self, service: Arc<S>) -> Self {
        self.services.insert(TypeId::of::<S>(), service);
        self
    }

    /// With these settings.
    #[must_use]
    pub fn settings(mut self, settings: OfxSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Answers the command errors `classify` recognizes with the status it gives (`None`: the
    /// default answers of the [command endpoint](crate::commands)): the application's own
    /// errors, or a storage's.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use ofx_axum::{ErrorAnswer, Ofx};
    ///
    /// # fn build(hub: &ofx_core::Hub) -> Ofx {
    /// Ofx::builder(hub)
    ///     .classify_errors(|error| {
    ///         let too_large = matches!(
    ///             error.scope_error::<ofx_diesel::Error>(),
    ///             Some(ofx_diesel::Error::PayloadTooLarge { .. })
    ///         );
    ///         too_large.then_some(ErrorAnswer { status: StatusCode::PAYLOAD_TOO_LARGE, kind: "too_large" })
    ///     })
    ///     .build()
    /// # }
    /// ```
    #[must_use]
    pub fn classify_errors(
        mut self,
        classify: impl Fn(&Error) -> Option<ErrorAnswer> + Send + Sync + 'static,
    ) -> Self {
        self.classify = Some(Arc::new(classify));
        self
    }

    /// Ends the live streams when `token` is cancelled (as [`Ofx::shutdown`] does).
    #[must_use]
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// The state.
    pub fn build(self) -> Ofx {
        Ofx {
            inner: Arc::new(Inner {
                classify: self.classify,
                hub: self.hub,
                services: self.services,
                settings: self.settings,
                shutdown: self.shutdown.unwrap_or_default(),
            }),
        }
    }
}

/// Extracts the service `S` that was given to [`OfxBuilder::service`], from a router state
/// that is (or contains, through [`FromRef`]) an [`Ofx`]. A service that was not given is a
/// server error (500), logged.
///
/// ```no_run
/// use ofx_axum::OfxService;
/// # use ofx_core::{ComputeService, Error, Hub};
/// # struct Todos { hub: Hub }
/// # impl ComputeService for Todos { fn hub(&self) -> &Hub { &self.hub } }
/// # impl Todos { async fn count(&self) -> usize { 0 } }
///
/// async fn count(OfxService(todos): OfxService<Todos>) -> String {
///     todos.count().await.to_string()
/// }
/// ```
#[derive(Debug)]
pub struct OfxService<S>(pub Arc<S>);

impl<S, St> FromRequestParts<St> for OfxService<S>
where
    S: ComputeService,
    Ofx: FromRef<St>,
    St: Send + Sync,
{
    type Rejection = (StatusCode, String);

    async fn from_request_parts(_parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        let ofx = Ofx::from_ref(state);
        match ofx.service::<S>() {
            Some(service) => Ok(Self(service)),
            None => {
                let service = std::any::type_name::<S>();
                tracing::error!(
                    service,
                    "a handler extracts a service that was not given to `OfxBuilder::service`"
                );
                Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the service `{service}` is not served here"),
                ))
            }
        }
    }
}

/// Extracts the [`Hub`] from a router state that is (or contains) an [`Ofx`].
#[derive(Debug, Clone)]
pub struct OfxHub(pub Hub);

impl<St> FromRequestParts<St> for OfxHub
where
    Ofx: FromRef<St>,
    St: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        Ok(Self(Ofx::from_ref(state).hub().clone()))
    }
}
