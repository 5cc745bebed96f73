//! The demo's web app, one per host: a page that shows an owner's todos live and changes them
//! with commands, the command endpoint, the live streams it reads, the state service's
//! `/status` and the process's `/metrics`.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page (`web/index.html`, its script `GET /app.js`), naming the host |
//! | `POST /commands/{name}` | `todos.add`, `todos.rename`, `todos.complete`, `todos.remove` (JSON) |
//! | `GET /live/view?args=["alice"]` | [`Todos::view`] over server-sent events |
//! | `GET /live/open_count?args=["alice"]` | [`Todos::open_count`] |
//! | `GET /live/figures?args=["alice"]` | [`Todos::figures`], from the history's state service |
//! | `GET /status` | the history's state service status: 200 when ready, 503 before |
//! | `GET /metrics` | the Prometheus recorder's rendering (shared by the hosts of a process) |

use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::Html;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use ofx_axum::Ofx;
use ofx_core::ComputeService;
use ofx_diesel::state::{StatusSource, status_router};
use tokio_util::sync::CancellationToken;

use crate::Todos;

/// The page, with `{{HOST}}` where the host's name goes.
const INDEX: &str = include_str!("web/index.html");
/// Its script.
const SCRIPT: &str = include_str!("web/app.js");

/// The app of host `name` over `todos` (on its hub): see the [module documentation](self).
/// Its live streams end when `shutdown` is cancelled; `/metrics` renders `metrics` (absent:
/// the route answers 404). Returns the router and its [`Ofx`] state.
pub fn app(
    name: &str,
    todos: &Arc<Todos>,
    shutdown: CancellationToken,
    metrics: Option<PrometheusHandle>,
) -> (Router, Ofx) {
    let ofx = Ofx::builder(todos.hub())
        .service(Arc::clone(todos))
        .shutdown_on(shutdown)
        .build();
    let page = INDEX.replace("{{HOST}}", &escape(name));
    let mut router = Router::new()
        .route("/", get(move || async move { Html(page) }))
        .route(
            "/app.js",
            get(|| async { ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }),
        )
        .nest("/commands", ofx.command_router())
        .route("/live/view", ofx.live(todos, Todos::view_method()))
        .route(
            "/live/open_count",
            ofx.live(todos, Todos::open_count_method()),
        )
        .route("/live/figures", ofx.live(todos, Todos::figures_method()))
        .merge(status_router([
            Arc::new(todos.history().clone()) as Arc<dyn StatusSource>
        ]));
    if let Some(handle) = metrics {
        router = router.route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        handle.render(),
                    )
                }
            }),
        );
    }
    (router, ofx)
}

/// `text` for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
