//! Attacks that broke a documented promise of ofx-axum at d9eb555, kept as regression tests
//! now that each is fixed (the failure each produced then is in its comment). The two that
//! are limits rather than bugs (a client that stops reading holds a graceful shutdown; a large
//! body's 413 may be lost to a reset) are documented and kept apart in `limits.rs`, which is
//! not compiled into the target.
//!
//! Each test says what failed (the exact assertion output), why (file:line in the
//! implementation) and a suggested fix.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ofx_axum::OfxSettings;
use serde_json::json;

use crate::kit::{Host, SseClient, args, post, temp_path, two_hosts, until};

/// FINDING 2: a handler error that is transient (the database stays locked / unreachable past
/// the retries) is answered 422 `rejected`, not 503 `unavailable` (promise: `commands.rs`
/// table, "503 `unavailable` | a transient error outlasted the retries (the database is
/// unreachable, ...)"). A client told 422 thinks its command is wrong and does not retry.
///
/// Fails with (after ~15 s: three tries of SQLite's 5 s busy timeout):
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:91:5:
/// assertion `left == right` failed: {"error":"rejected","message":"database error: database is locked"}
///   left: (422, String("rejected"))
///  right: (503, String("unavailable"))
/// ```
/// Cause: `commands.rs:153`: `into_response` matches `Error::Handler(..)` (→ 422) before the
/// `_ if ofx.hub().is_transient(&failure)` arm (`commands.rs:170`). A database error met by a
/// handler (`operation_connection`, a query) reaches the commander as `Error::Handler`, which
/// `Hub::is_transient` classifies as transient (that is why it was retried three times); the
/// 503 arm is only reachable for `Error::Scope` and the like.
/// Fix: test `ofx.hub().is_transient(&failure)` first (before the `Error::Handler` and
/// `Error::Rejected` arms; `is_transient_by` already excludes `CommitInDoubt` and
/// `Permanent`-marked errors), so 422 is left for permanent handler errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_database_that_stays_locked_is_503_unavailable() {
    let (a, _b) = two_hosts().await;
    let (release, holder) = a.notes.lock_database().await;
    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "while locked"}).to_string(),
    )
    .await;
    release.send(()).unwrap();
    holder.await.unwrap();
    assert_eq!(a.notes.rows().await, 0);
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "{body}"
    );
}

/// FINDING 2 (b): the same, with a handler whose error is marked transient
/// (`ofx_core::Error::transient`), without waiting for SQLite's busy timeout.
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:113:5:
/// assertion `left == right` failed: {"error":"rejected","message":"the command handler failed: the database is unreachable"}
///   left: (422, String("rejected"))
///  right: (503, String("unavailable"))
/// ```
/// Cause and fix: as above (`commands.rs:153` before `commands.rs:170`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_transient_handler_error_is_503_unavailable() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(
        &format!("{}/commands/notes.add_unreachable", a.url),
        json!({"owner": "ann"}).to_string(),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "{body}"
    );
}

/// FINDING 3: a recomputation to an identical value sends a frame when the value holds an
/// unordered map (`HashMap`, `HashSet`): its JSON comes out in another order each time, so every
/// invalidation that changes nothing still sends the whole value (promise: `live.rs` module
/// doc, "A recomputation that yields the same JSON as the last frame sends nothing", and the
/// brief's "a recomputation to an identical value sends no frame"). Here the five touches
/// that changed nothing sent five frames before the real change.
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:156:5:
/// assertion `left == right` failed: a frame for an unchanged map
///   left: 32
///  right: 33
/// ```
/// Cause: `live.rs:321` encodes with `serde_json::to_string(&value)` and `live.rs:329`
/// compares the text with the last frame's; a `HashMap` serializes in iteration order, which
/// std's `RandomState` makes different for every map built (each recomputation builds one).
/// Fix: compare values, not text: keep the last frame's `serde_json::Value`
/// (`serde_json::to_value(&value)`) and compare with `==` (object equality ignores key order,
/// with or without `preserve_order`), then encode the `Value` for the frame; or canonicalize
/// (`to_value` then `to_string`: without `preserve_order` objects are `BTreeMap`s, sorted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_recomputation_to_an_identical_map_sends_no_frame() {
    let (a, _b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/tags?args={}", a.url, args(json!(["ann"]))),
        None,
    )
    .await;
    assert_eq!(live.next().await.json().as_object().unwrap().len(), 32);
    for _ in 0..5 {
        let before = a.notes.tags_computations.load(Ordering::SeqCst);
        a.notes.touch_tags("ann");
        until("the stream recomputed", || {
            a.notes.tags_computations.load(Ordering::SeqCst) > before
        })
        .await;
    }
    a.notes.grow_tags("ann");
    let frame = live.next().await;
    assert_eq!(
        frame.json().as_object().unwrap().len(),
        33,
        "a frame for an unchanged map"
    );
}

/// FINDING 4 (security; no documented status covers it): a command sent as `text/plain`, or
/// with no content type, runs. A cross-site page can send such a POST from the victim's
/// browser without a CORS preflight (`<form enctype="text/plain">`, or `fetch` with
/// `mode: "no-cors"`), with the victim's cookies: every client command is open to CSRF for an
/// application that authenticates by cookie. axum's own `Json` extractor refuses such bodies
/// (415) for this reason.
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:192:9:
/// assertion `left != right` failed: Some("text/plain")
///   left: 200
///  right: 200
/// ```
/// Cause: `commands.rs:86` takes the body as raw `Bytes` and `commands.rs:118` parses it with
/// `serde_json::from_slice` whatever the `Content-Type`.
/// Fix: require `Content-Type: application/json` (or `application/*+json`) and answer 415
/// `unsupported_media_type` otherwise (add it to the table), before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_command_sent_as_text_plain_does_not_run() {
    let (a, _b) = two_hosts().await;
    for content_type in [Some("text/plain"), None] {
        let mut request = reqwest::Client::new()
            .post(format!("{}/commands/notes.add", a.url))
            .body(json!({"owner": "ann", "text": "csrf"}).to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let status = request.send().await.unwrap().status().as_u16();
        assert_ne!(status, 200, "{content_type:?}");
    }
    assert_eq!(a.notes.rows().await, 0);
}

/// FINDING 5: with a capacity above the number of distinct live values served (as `live.rs`'s
/// "Cost" section asks: 40 live values, capacity 64), live values computed from another value
/// make the cache churn forever: each stream's value is evicted and recomputed in turn, with
/// nothing changing. No frame is sent, but the database is queried thousands of times a
/// second, and it does not stop.
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:246:5:
/// 6697 recomputations in the first second after the streams opened, 5197 in the next two, with nothing changing
/// ```
/// (The same with `list`, which depends on nothing, settles:
/// `streams_of_values_without_dependencies_within_the_capacity_settle` in `main.rs`.)
/// Cause: each `count(owner)` holds `list(owner)` in the cache, so 40 live values take 80
/// entries > 64. The evictor (`ofx-core/src/computed/registry.rs:246`) evicts a consistent
/// value that was not read since its hand passed and has no live dependent: a value a live
/// stream holds and awaits (`live.rs:298`, `computed.when_invalidated()`) is neither read
/// again nor depended on, so it is the first victim; its stream recomputes it at once
/// (`live.rs:301-303`), the insert runs the evictor (`compute.rs` `lead` →
/// `evict_if_over_capacity`), which evicts another stream's value, and so on forever.
/// Fix: the evictor should treat a value somebody awaits (`NodeCore::changed` has listeners)
/// as in use, like a value with a live dependent, or the live stream should hold its value
/// as a dependent would; at least the documentation should ask for a capacity above the
/// live values *and everything they are computed from*, and warn that below it streams
/// recompute continuously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_streams_within_the_capacity_do_not_recompute_forever() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Host::start_full(&path, &dir, OfxSettings::default(), Some(64)).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut client = SseClient::open(
            &format!(
                "{}/live/count?args={}",
                a.url,
                args(json!([format!("o{i}")]))
            ),
            None,
        )
        .await;
        client.next().await;
        clients.push(client);
    }
    // 40 live values, capacity 64: once every stream sent its value, nothing recomputes. Let
    // what the opening set off run out for a second, then watch for two more seconds: the
    // recomputations go on at the same pace, with nothing changing.
    let opened = a.notes.list_computations.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = a.notes.list_computations.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = a.notes.list_computations.load(Ordering::SeqCst);
    assert!(
        now - settled < 10,
        "{} recomputations in the first second after the streams opened, {} in the next two, with nothing changing",
        settled - opened,
        now - settled
    );
}

/// FINDING 6: with `max_command_body` above the operation log's payload limit
/// (`ofx_diesel::MAX_PAYLOAD_BYTES`, 1 MiB), a command the endpoint accepts by size but the log
/// cannot store is a 500 `internal` (logged at error level as a server failure), not 413: a
/// client input that answers 500 (promise: "no panic/500 from any client input"; the 413 row
/// says the limit is `max_command_body`). Nothing is written (the transaction rolls back).
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:289:5:
/// assertion `left == right` failed: {"error":"internal","message":"the operation scope failed: operation 01a24f80-de84-763f-b278-ac976fc44f2d is 2097181 bytes, over the log's limit of 1048576"}
///   left: (500, String("internal"))
///  right: (413, String("too_large"))
/// ```
/// Cause: `commands.rs:173-176`: the scope's `ofx_diesel::Error::PayloadTooLarge` (returned
/// from the commit, `ofx-diesel/src/scope.rs` `EncodedOperation::new`) reaches
/// `into_response` as `Error::Scope`, not transient, so it falls to the 500 arm; nothing in
/// `OfxSettings` relates `max_command_body` to the log's limit.
/// Fix: map a payload-too-large scope error to 413 `too_large` (ofx-core could expose it as
/// a kind, or ofx-axum could downcast the scope error), and document in
/// `OfxSettings::max_command_body` that a body above the storage's payload limit is refused
/// by the storage anyway (or clamp the default and warn when it is set above 1 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_command_over_the_logs_limit_is_413_not_500() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = OfxSettings::default();
    settings.max_command_body = 4 << 20;
    let a = Host::start_with(&path, &dir, settings).await;
    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "x".repeat(2 << 20)}).to_string(),
    )
    .await;
    assert_eq!(a.notes.rows().await, 0, "nothing written");
    assert_eq!(
        (status, &body["error"]),
        (413, &json!("too_large")),
        "{body:.300}"
    );
}

/// FINDING 7: a command registered in the program whose service is not on this hub (a binary
/// that links more services than this host runs) answers 500 `internal`, logged at error level
/// as a server failure, for any client that names it: a client input that answers 500
/// (promise: "no panic/500 from any client input"; for a client the command does not exist
/// here, 404).
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:314:5:
/// assertion `left == right` failed: {"error":"internal","message":"no service on this hub handles the command `elsewhere.ping`: add the service that has its `#[command_handler]` with `Hub::add_service`"}
///   left: (500, String("internal"))
///  right: (404, String("unknown_command"))
/// ```
/// Cause: `commands.rs:106-116` checks the name against the program-wide registry only
/// (`Commander::is_backend_command`); `call_json` then fails with `Error::NoHandler`, which
/// `into_response` sends to its 500 arm (`commands.rs:173-176`).
/// Fix: answer `Error::NoHandler` with 404 `unknown_command` (nothing handles it on this
/// server), or check the hub's handlers before decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_command_no_service_here_handles_is_404_not_500() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(&format!("{}/commands/elsewhere.ping", a.url), "null").await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("unknown_command")),
        "{body}"
    );
}

/// FINDING 9 (minor): not every error answer of the command endpoint has the documented
/// `{"error", "message"}` body: a name that is not UTF-8 once percent-decoded is a plain-text
/// 400, an empty name or one with a `/` a 404 with an empty body (promise: the `commands.rs`
/// table's "body" column). A client that parses the error JSON fails on these.
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:395:5:
/// [
///     "\"%FF\": 400 \"Invalid URL: Invalid UTF-8 in `name`\"",
///     "\"\": 404 \"\"",
///     "\"notes.add/x\": 404 \"\"",
/// ]
/// ```
/// Cause: `commands.rs:85` extracts `Path<String>`, whose rejection axum answers in plain
/// text; `commands.rs:77` routes only `/{name}`, so other paths under the nest get the
/// router's empty 404.
/// Fix: take `Result<Path<String>, PathRejection>` and answer `bad_name` (400) as JSON; add a
/// `.fallback(..)` to the command router answering 404 `unknown_command` as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_every_error_answer_is_the_documented_json() {
    let (a, _b) = two_hosts().await;
    let mut bad = Vec::new();
    // `/commands/` itself (an empty name) is the application's router's path, not the command
    // router's: axum's `nest` does not hand it down, so its 404 is the application's.
    for name in ["%FF", "notes.add/x"] {
        let (status, body) = post(&format!("{}/commands/{name}", a.url), "null").await;
        if body.get("error").is_none() {
            bad.push(format!("{name:?}: {status} {body}"));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// FINDING 10 (minor): a hub whose log reader is running (`Hub::builder().with(db).start()`
/// returned: "when this returns, the start is established") has no log position until the
/// reader's first pass reports one, so the live frames computed meanwhile have ids without a
/// position, though `live.rs` says an id is "`42` alone on a hub without a log reader" (a
/// client that waits for `position >= sequence` to read its own write cannot). Seen first as
/// `every_frame_reflects_the_log_position_in_its_id` failing on `id.position.unwrap()` for an
/// `init` frame when the machine was loaded (the kit now waits for a position).
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:432:5:
/// assertion `left == right` failed
///   left: None
///  right: Some("a position")
/// ```
/// Cause: `ofx-diesel/src/reader.rs` `spawn_reader` establishes the start (`start`, which sets
/// `state.cursor`) but only the spawned task's loop calls `hub.advance_log_position`
/// (`reader.rs:753`), after its first `read`; `live.rs:302` reads `log_position()` as `None`
/// meanwhile.
/// Fix: advance the hub's position to the established start in `spawn_reader` before it
/// returns (everything at or below the start cursor is reflected: the cache was empty or was
/// invalidated by `start`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_hub_with_a_log_reader_has_a_position_once_started() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let db = ofx_diesel::DbHub::<ofx_diesel::Sqlite>::open(
        path.to_str().unwrap(),
        ofx_diesel::DbSettings::default(),
    )
    .await
    .unwrap();
    let hub = ofx_core::Hub::builder().with(db).start().await.unwrap();
    assert_eq!(hub.log_position().map(|_| "a position"), Some("a position"));
}
