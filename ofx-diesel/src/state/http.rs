//! The status route for load balancers (feature `http`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use super::status::{StateStatus, StatusSource};

/// A router with `GET /status`: `200` when every service given is ready, `503` otherwise, with
/// their [`StateStatus`]es as a JSON array. Put it behind the load balancer's health check so
/// that no request reaches a host whose state services have not caught up. Merge it into the
/// application's router, or nest it.
///
/// A [`StateService`](super::StateService) converts into an `Arc<dyn StatusSource>`, so that
/// services of different projections go in one list:
///
/// ```no_run
/// # use std::sync::Arc;
/// # use ofx_diesel::state::{StatusSource, status_router};
/// # fn example(ledger: impl StatusSource, audit: impl StatusSource) {
/// let one: axum::Router = status_router([Arc::new(ledger) as Arc<dyn StatusSource>]);
/// # }
/// # fn services<P: ofx_diesel::state::Projection, Q: ofx_diesel::state::Projection>(
/// #     ledger: ofx_diesel::state::StateService<P, ofx_diesel::Sqlite>,
/// #     audit: ofx_diesel::state::StateService<Q, ofx_diesel::Sqlite>,
/// # ) {
/// let both: axum::Router = status_router([
///     Arc::<dyn StatusSource>::from(ledger.clone()),
///     audit.clone().into(),
/// ]);
/// # }
/// ```
pub fn status_router(
    services: impl IntoIterator<Item = impl Into<Arc<dyn StatusSource>>>,
) -> Router {
    let services: Arc<[Arc<dyn StatusSource>]> = services.into_iter().map(Into::into).collect();
    Router::new().route(
        "/status",
        get(move || {
            let services = Arc::clone(&services);
            async move {
                let statuses: Vec<StateStatus> =
                    services.iter().map(|service| service.status()).collect();
                let code = if statuses.iter().all(|status| status.ready) {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, Json(statuses))
            }
        }),
    )
}
