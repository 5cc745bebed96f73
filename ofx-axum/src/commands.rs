//! The command endpoint: `POST /{name}` with the command as JSON.
//!
//! The command registered under `name` (`#[command(name = "...")]`) is decoded from the body
//! by the program's closed command registry, and run for a client
//! ([`Commander::call_json`](ofx_core::Commander::call_json)): a backend command is refused.
//!
//! | status | when | body |
//! |---|---|---|
//! | 200 | the command committed | [`CommandResponse`]: the operation's uuid, its log position, the output as JSON (`null` when the output type is not `Serialize`) |
//! | 400 `bad_json` | the body is not JSON, or not that command (the decoder's message) | `{"error", "message"}` |
//! | 403 `backend_command` | a backend command | |
//! | 404 `unknown_command` | no command has that name, or no service on this hub handles it | |
//! | 413 `too_large` | the body is larger than [`OfxSettings::max_command_body`](crate::OfxSettings::max_command_body) | |
//! | 415 `not_json` | the request's `Content-Type` is not `application/json` (a form or a text body could come from another site without a CORS preflight) | |
//! | 422 `rejected` | the handler returned an error, or a filter refused the command | the error's message |
//! | 503 `in_doubt` | the commit's outcome is unknown: check the log by `operation` before retrying | with `"operation"` |
//! | 503 `unavailable` | a transient error outlasted the retries (the database is locked or unreachable, ...; [`Hub::is_transient`](ofx_core::Hub::is_transient)) | |
//! | 500 `internal` | anything else (a handler that panicked, a service that is gone) | |
//!
//! Nothing is written when the answer is not 200 (except, possibly, for `in_doubt`). Every
//! error answer is JSON, `{"error", "message"}`. Errors of your own (a storage's "too large",
//! an authorization failure) get the status you choose with
//! [`OfxBuilder::classify_errors`](crate::OfxBuilder::classify_errors); keep
//! `max_command_body` under your storage's payload limit (ofx-diesel's log takes 1 MiB per
//! operation by default).
//!
//! A body over the limit is refused as soon as it is seen, without reading the rest: a client
//! that writes a large body before reading the answer may see its connection closed instead of
//! the 413 (send `Expect: 100-continue`, or keep bodies small).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ofx_core::{CallOptions, Error};
use serde::{Deserialize, Serialize};

use crate::Ofx;

/// What a command that committed answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandResponse {
    /// The operation's uuid.
    pub operation: uuid::Uuid,
    /// Its position in the operation log (`null` when the operation was not stored: it wrote
    /// nothing). Another host has this write once its log position reaches it.
    pub sequence: Option<i64>,
    /// The handler's output as JSON (`null` when its type is not `Serialize`).
    pub output: Option<serde_json::Value>,
}

/// An error answer's body.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<uuid::Uuid>,
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error: kind,
            message,
            operation: None,
        }),
    )
        .into_response()
}

impl Ofx {
    /// The command endpoint, `POST /{name}`, to nest where you like
    /// (`.nest("/commands", ofx.command_router())`). See the [module documentation](self) for
    /// its answers.
    pub fn command_router<St>(&self) -> Router<St>
    where
        St: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/{name}", post(run_command))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(self.settings().max_command_body))
            .with_state(self.clone())
    }
}

/// Whether the request says its body is JSON (`application/json`, or a `+json` type).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_command",
        "no command is served at this path: POST /{name}".to_owned(),
    )
}

async fn run_command(
    State(ofx): State<Ofx>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Path(name) = match name {
        Ok(name) => name,
        Err(rejection) => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown_command",
                rejection.body_text(),
            );
        }
    };
    if !is_json(&headers) {
        // A form or a text body can be sent across sites without a CORS preflight: refusing
        // it keeps a page elsewhere from running commands with a user's cookies.
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            "a command is sent with `Content-Type: application/json`".to_owned(),
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the command is larger than the limit of {} bytes",
                    ofx.settings().max_command_body
                ),
            );
        }
        Err(rejection) => {
            return error(rejection.status(), "bad_body", rejection.body_text());
        }
    };
    // Known before the body is decoded: an unknown name is 404 and a backend command 403
    // whatever the body says.
    match ofx_core::Commander::is_backend_command(&name) {
        Ok(Some(true)) => {
            return error(
                StatusCode::FORBIDDEN,
                "backend_command",
                format!("the command `{name}` is a backend command: clients may not call it"),
            );
        }
        Ok(Some(false)) => {}
        Ok(None) => return into_response(&ofx, Error::UnknownCommandName { name }),
        Err(registry) => return into_response(&ofx, registry),
    }
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(json) => json,
        Err(decode) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the body is not JSON: {decode}"),
            );
        }
    };
    let commander = ofx.hub().commander();
    match commander
        .call_json(&name, json, CallOptions::new().from_client(true))
        .await
    {
        Ok(executed) => Json(CommandResponse {
            operation: executed.operation,
            sequence: executed.committed.and_then(|committed| committed.sequence),
            output: executed.output,
        })
        .into_response(),
        Err(failure) => into_response(&ofx, failure),
    }
}

fn into_response(ofx: &Ofx, failure: Error) -> Response {
    let message = failure.to_string();
    if let Some(answer) = ofx.classify(&failure) {
        return error(answer.status, answer.kind, message);
    }
    // Transient first: a database failure inside a handler is a handler error too, and a
    // client told 422 would not try again.
    if ofx.hub().is_transient(&failure) && !matches!(failure, Error::CommitInDoubt { .. }) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    }
    match &failure {
        Error::UnknownCommandName { .. } | Error::NoHandler { .. } => {
            error(StatusCode::NOT_FOUND, "unknown_command", message)
        }
        Error::CommandJson { source, .. } => {
            error(StatusCode::BAD_REQUEST, "bad_json", source.to_string())
        }
        Error::BackendCommand { .. } => error(StatusCode::FORBIDDEN, "backend_command", message),
        Error::Handler(handler) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
            handler.to_string(),
        ),
        Error::Rejected(reason) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, "rejected", reason.clone())
        }
        Error::CommitInDoubt { operation, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody {
                error: "in_doubt",
                message,
                operation: Some(*operation),
            }),
        )
            .into_response(),
        _ => {
            tracing::error!(error = %failure, "a command sent over HTTP failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
        }
    }
}
