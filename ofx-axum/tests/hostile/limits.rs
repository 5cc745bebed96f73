//! Limits found by the hostile review that ofx-axum documents rather than fixes: each test
//! FAILS. Not compiled into the `hostile` target (not declared in `main.rs`); to run them,
//! add `mod limits;` above `mod kit;` in `main.rs` and run
//! `cargo test -p ofx-axum --test hostile -- limits`. Where each is documented: the `live`
//! module's "Shutdown" section, and the `commands` module's note on bodies over the limit.
//!
//! Each test says what failed (the exact assertion output), why (file:line in the
//! implementation) and a suggested fix.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ofx_axum::OfxSettings;
use serde_json::json;

use crate::kit::{Host, SseClient, args, post, temp_path, two_hosts, until};
use crate::{fill_until_blocked, never_reading_client};

/// FINDING 1: `Ofx::shutdown` does not let axum's graceful shutdown finish while a client that
/// stopped reading holds a live stream whose socket buffers are full (promise: `state.rs`
/// `Ofx::shutdown`, "so that `axum::serve(..).with_graceful_shutdown(..)` does not wait forever
/// for streams that never end"; the lib.rs example relies on it).
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:56:13:
/// the graceful shutdown finishes within 10 s: Elapsed(())
/// ```
/// Cause: the stream only sees the cancellation when hyper polls the body (`live.rs:295-307`,
/// the `select!`s on `self.shutdown` inside `Live::next`), and hyper polls a response body only
/// when its write buffer can take more. A client that stopped reading fills the socket buffers,
/// hyper waits on the socket forever (there is no write timeout), never polls the stream again,
/// and the connection's graceful shutdown (`conn.graceful_shutdown()`, which waits for the
/// response in flight to finish) never completes; `axum::serve` waits for every connection.
/// Nothing inside the body can fix it: it is not polled.
/// Fix: bound the graceful shutdown outside the body: e.g. an `Ofx::serve`/helper (or the
/// documented pattern in lib.rs) that, once the signal fired, races the serve future against
/// a grace period and then drops it (closing the remaining connections), or serve through
/// hyper-util's `GracefulShutdown` with a timeout; and document in `Ofx::shutdown` that a
/// client that stopped reading can hold the graceful shutdown until then. (The same
/// connection also outlives any keep-alive while the server runs: a per-connection write
/// timeout would free it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_client_that_never_reads_blocks_the_graceful_shutdown() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Host::start(&path, &dir).await;
    let client = never_reading_client(a.addr, "/live/blob").await;
    until("the init frame is computed", || {
        a.notes.blob_computations.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(fill_until_blocked(&a).await, "the connection never filled up");
    let stopped = a.stop().await;
    drop(client);
    stopped.expect("the graceful shutdown finishes within 10 s");
}

/// FINDING 8 (minor; partly hyper's): a body far over the limit, sent whole with its
/// `Content-Length` by an ordinary client (reqwest): most tries get no 413 at all but a broken
/// pipe, the client cannot tell "too large" from "server down" (promise: `commands.rs` table,
/// "413 `too_large` | the body is larger than `max_command_body`"; `OfxSettings`: "refused
/// with 413 before it is read whole"). Which tries fail varies; in every run some did (6 of
/// 10 here).
///
/// Fails with:
/// ```text
/// panicked at ofx-axum/tests/hostile/findings.rs:362:5:
/// [
///     "error: reqwest::Error { kind: Request, url: \"http://127.0.0.1:46477/commands/notes.add\", source: hyper_util::client::legacy::Error(SendRequest, hyper::Error(BodyWrite, Os { code: 32, kind: BrokenPipe, message: \"Broken pipe\" })) }",
///     (x3 more), "413", "413", "413", (broken pipe), "413", (broken pipe)
/// ]
/// ```
/// Cause: `commands.rs:78` (`DefaultBodyLimit`) + `commands.rs:88-99`: the 413 is answered as
/// soon as the announced length is over the limit, and hyper then closes the connection with
/// megabytes of the request unread: the kernel resets it, and a client still writing its body
/// fails on the write (EPIPE/ECONNRESET) before it reads the answer.
/// Fix: for a refused oversized body, answer with `Connection: close` and drain (read and
/// discard) the rest of the body up to a bound (a few times the limit, with a deadline) before
/// closing, so that the 413 is read; document that clients should send
/// `Expect: 100-continue` for large bodies (hyper answers the 413 before the body is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_large_body_over_the_limit_gets_its_413() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = OfxSettings::default();
    settings.max_command_body = 1024;
    let a = Host::start_with(&path, &dir, settings).await;
    let body = json!({"owner": "ann", "text": "x".repeat(8 << 20)}).to_string();
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        let sent = reqwest::Client::new()
            .post(format!("{}/commands/notes.add", a.url))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        outcomes.push(match sent {
            Ok(response) => format!("{}", response.status().as_u16()),
            Err(error) => format!("error: {error:?}"),
        });
    }
    assert!(outcomes.iter().all(|outcome| outcome == "413"), "{outcomes:#?}");
    assert_eq!(a.notes.rows().await, 0);
}
