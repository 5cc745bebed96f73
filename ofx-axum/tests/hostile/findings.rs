//! Attacks that broke a documented promise of ofx-axum: each test FAILS against the
//! implementation it was written for. Not compiled into the `hostile` target (not declared in
//! `main.rs`); to run one, add `mod findings;` to `main.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ofx_axum::OfxSettings;
use serde_json::json;

use crate::kit::{Host, SseClient, args, post, temp_path, two_hosts, until};
use crate::{fill_until_blocked, never_reading_client};

/// FINDING: `Ofx::shutdown` does not let axum's graceful shutdown finish while a client that
/// stopped reading holds a live stream whose socket buffers are full.
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

/// FINDING: a handler error that is transient (the database stays locked / unreachable past
/// the retries) is answered 422 `rejected`, not 503 `unavailable`.
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
    assert_eq!((status, &body["error"]), (503, &json!("unavailable")), "{body}");
}

/// FINDING: the same, with a handler whose error is marked transient (`Error::transient`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_a_transient_handler_error_is_503_unavailable() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(
        &format!("{}/commands/notes.add_unreachable", a.url),
        json!({"owner": "ann"}).to_string(),
    )
    .await;
    assert_eq!((status, &body["error"]), (503, &json!("unavailable")), "{body}");
}

/// FINDING: a recomputation to an identical value sends a frame when the value holds an
/// unordered map (`HashMap`): its JSON comes out in another order each time.
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

/// FINDING (security, not a documented status): a command sent as `text/plain` (what a
/// cross-site form or `fetch(.., {mode: "no-cors"})` can send without a CORS preflight) runs.
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

/// FINDING: with a capacity above the number of distinct live values served (as the
/// documentation asks), live values computed from another value make the cache churn
/// forever: every stream's value is evicted and recomputed in turn, with nothing changing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_streams_within_the_capacity_do_not_recompute_forever() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let a = Host::start_full(&path, &dir, OfxSettings::default(), Some(64)).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut client = SseClient::open(
            &format!("{}/live/count?args={}", a.url, args(json!([format!("o{i}")]))),
            None,
        )
        .await;
        client.next().await;
        clients.push(client);
    }
    // 40 live values, capacity 64: once every stream sent its value, nothing recomputes.
    let settled = a.notes.list_computations.load(Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let now = a.notes.list_computations.load(Ordering::SeqCst);
        assert!(
            now < settled + 200,
            "{} recomputations with nothing changing",
            now - settled
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
