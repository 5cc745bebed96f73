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
/// ```no_run
/// # use std::sync::Arc;
/// # fn example(ledger: Arc<dyn ofx_diesel::state::StatusSource>) {
/// let app: axum::Router = ofx_diesel::state::status_router(vec![ledger]);
/// # }
/// ```
pub fn status_router(services: Vec<Arc<dyn StatusSource>>) -> Router {
    let services: Arc<[Arc<dyn StatusSource>]> = services.into();
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
