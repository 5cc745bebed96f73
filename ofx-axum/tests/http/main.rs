//! ofx-axum over real HTTP: a served router, a real client, two hosts on one SQLite file woken
//! by the file-system watcher.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)] // a failed unwrap is a failed test

#[path = "../kit/mod.rs"]
mod kit;

use std::time::Duration;

use kit::{Host, Notes, SseClient, args, post, temp_path, two_hosts};
use ofx_axum::{LiveFrameId, OfxSettings};
use ofx_core::ComputeMethod;
use serde_json::json;

// ---- commands ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_by_name_commits_and_answers_its_output() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "milk"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["text"], "milk");
    assert!(body["output"]["id"].as_i64().unwrap() > 0);
    assert!(body["sequence"].as_i64().unwrap() > 0, "{body}");
    body["operation"]
        .as_str()
        .unwrap()
        .parse::<uuid::Uuid>()
        .unwrap();
    assert_eq!(a.notes.rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_output_is_not_serialize_answers_null() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(&format!("{}/commands/notes.opaque", a.url), "null").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_command_is_404() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(&format!("{}/commands/notes.nope", a.url), "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "unknown_command");
    assert!(body["message"].as_str().unwrap().contains("notes.nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_400_and_writes_nothing() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(&format!("{}/commands/notes.add", a.url), "{owner: ann").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_json");
    assert!(
        body["message"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );
    assert_eq!(a.notes.rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_is_not_the_command_is_400_with_the_decoders_message() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann"}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_json");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("missing field `text`"),
        "{body}"
    );
    assert_eq!(a.notes.rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_command_is_403_and_does_not_run() {
    let (a, _b) = two_hosts().await;
    a.hub
        .commander()
        .call(kit::AddNote {
            owner: "ann".into(),
            text: "keep".into(),
        })
        .await
        .unwrap();
    let (status, body) = post(&format!("{}/commands/notes.purge_all", a.url), "null").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "backend_command");
    assert_eq!(a.notes.rows().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413_and_writes_nothing() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = OfxSettings::default();
    settings.max_command_body = 1024;
    let a = Host::start_with(&path, &dir, settings).await;
    let text = "x".repeat(2048);
    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": text}).to_string(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large");
    assert_eq!(a.notes.rows().await, 0);
    // Just under the limit passes.
    let (status, _) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "x".repeat(900)}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_is_422_and_leaves_no_partial_write() {
    let (a, _b) = two_hosts().await;
    let (status, body) = post(
        &format!("{}/commands/notes.add_then_fail", a.url),
        json!({"owner": "ann"}).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "rejected");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("refused after writing")
    );
    assert_eq!(
        a.notes.rows().await,
        0,
        "the insert before the failure was rolled back"
    );
    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": ""}).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("notes need text")
    );
}

// ---- live values ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_value_starts_with_init_then_updates_after_a_command_on_another_host() {
    let (a, b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/list?args={}", b.url, args(json!(["ann"]))),
        None,
    )
    .await;
    assert_eq!(live.status, 200);
    assert!(
        live.content_type.starts_with("text/event-stream"),
        "{}",
        live.content_type
    );
    let init = live.next().await;
    assert_eq!(init.event.as_deref(), Some("init"));
    assert_eq!(init.retry, Some(1000));
    assert_eq!(init.json(), json!({"Ok": []}));
    let init_id: LiveFrameId = init.id.as_deref().unwrap().parse().unwrap();

    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "milk"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let sequence = body["sequence"].as_i64().unwrap();
    let update = live.next().await;
    assert_eq!(update.event.as_deref(), Some("update"));
    assert_eq!(update.retry, None);
    let id = body["output"]["id"].as_i64().unwrap();
    assert_eq!(update.json(), json!({"Ok": [{"id": id, "text": "milk"}]}));
    let update_id: LiveFrameId = update.id.as_deref().unwrap().parse().unwrap();
    assert!(update_id.version > init_id.version);
    assert!(
        update_id.position.unwrap() >= sequence,
        "the frame reflects the log through the command: {update_id} vs {sequence}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_value_updates_when_a_value_it_depends_on_is_invalidated() {
    let (a, b) = two_hosts().await;
    let mut on_a = SseClient::open(
        &format!("{}/live/count?args={}", a.url, args(json!(["ann"]))),
        None,
    )
    .await;
    let mut on_b = SseClient::open(
        &format!("{}/live/count?args={}", b.url, args(json!(["ann"]))),
        None,
    )
    .await;
    assert_eq!(on_a.next().await.json(), json!({"Ok": 0}));
    assert_eq!(on_b.next().await.json(), json!({"Ok": 0}));
    for expected in 1..=3 {
        let (status, _) = post(
            &format!("{}/commands/notes.add", b.url),
            json!({"owner": "ann", "text": format!("n{expected}")}).to_string(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(on_a.next().await.json(), json!({"Ok": expected}));
        assert_eq!(on_b.next().await.json(), json!({"Ok": expected}));
    }
    // Another owner's note touches neither stream.
    post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "bob", "text": "x"}).to_string(),
    )
    .await;
    post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "last"}).to_string(),
    )
    .await;
    assert_eq!(
        on_b.next().await.json(),
        json!({"Ok": 4}),
        "no frame for bob's note"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gets_the_current_value_at_once() {
    let (a, b) = two_hosts().await;
    let url = format!("{}/live/list?args={}", b.url, args(json!(["ann"])));
    let mut first = SseClient::open(&url, None).await;
    let init = first.next().await;
    drop(first);
    let (_, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "while away"}).to_string(),
    )
    .await;
    // Host B has the write once its log position reaches the command's.
    let sequence = body["sequence"].as_i64().unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        b.hub.log_position_reached(sequence),
    )
    .await
    .expect("host B replays the command");
    let mut again = SseClient::open(&url, init.id.as_deref()).await;
    let resumed = again.next_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!(resumed.event.as_deref(), Some("init"));
    assert_eq!(resumed.json()["Ok"][0]["text"], "while away");
    let resumed_id: LiveFrameId = resumed.id.as_deref().unwrap().parse().unwrap();
    let init_id: LiveFrameId = init.id.as_deref().unwrap().parse().unwrap();
    assert!(resumed_id.version > init_id.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_the_latest_value_not_a_backlog() {
    let (a, _b) = two_hosts().await;
    // Each value is 1 MiB: a client that does not read fills the socket buffers with a few.
    let mut live = SseClient::open(&format!("{}/live/blob", a.url), None).await;
    assert_eq!(live.next().await.json()[0], 0);
    let computations_before = kit::Notes::blob_method().descriptor().computations();
    let updates = 200;
    for _ in 0..updates {
        a.notes.bump_blob();
    }
    // Now read: frames arrive until the latest value; far fewer than the updates.
    let mut frames = 0;
    loop {
        let frame = live.next().await;
        frames += 1;
        if frame.json()[0] == updates {
            break;
        }
    }
    let computed = kit::Notes::blob_method().descriptor().computations() - computations_before;
    assert!(
        frames < updates / 4,
        "{frames} frames for {updates} updates: a backlog"
    );
    assert!(
        computed < updates / 4,
        "{computed} computations for {updates} updates: the stream computed frames the client could not take"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_changes_nothing_sends_no_frame() {
    let (a, _b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/list?args={}", a.url, args(json!(["ann"]))),
        None,
    )
    .await;
    assert_eq!(live.next().await.json(), json!({"Ok": []}));
    let computations = Notes::list_method().descriptor().computations();
    a.notes.touch_list("ann");
    // The stream recomputes (the value was invalidated) before the next change is made.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Notes::list_method().descriptor().computations() == computations {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream did not recompute"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "real"}).to_string(),
    )
    .await;
    let next = live.next().await;
    assert_eq!(
        next.json()["Ok"][0]["text"],
        "real",
        "no frame for the unchanged value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_method_that_panics_ends_the_stream_with_an_error_frame() {
    let (a, _b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/fragile?args={}", a.url, args(json!([true]))),
        None,
    )
    .await;
    let frame = live.next().await;
    assert_eq!(frame.event.as_deref(), Some("error"));
    assert!(frame.data.contains("panicked"), "{frame:?}");
    assert_eq!(live.next_within(Duration::from_secs(5)).await, None);
    // The host still serves.
    let mut live = SseClient::open(
        &format!("{}/live/fragile?args={}", a.url, args(json!([false]))),
        None,
    )
    .await;
    assert_eq!(live.next().await.json(), json!(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_without_arguments_takes_no_args_or_an_empty_array() {
    let (a, _b) = two_hosts().await;
    for url in [
        format!("{}/live/blob", a.url),
        format!("{}/live/blob?args=%5B%5D", a.url),
    ] {
        let mut live = SseClient::open(&url, None).await;
        assert_eq!(live.status, 200, "{url}");
        assert_eq!(live.next().await.json()[0], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_live_arguments_are_400() {
    let (a, _b) = two_hosts().await;
    let live = SseClient::open(
        &format!("{}/live/list?args={}", a.url, args(json!([3]))),
        None,
    )
    .await;
    assert_eq!(live.status, 400);
    let live = SseClient::open(&format!("{}/live/list", a.url), None).await;
    assert_eq!(live.status, 400, "a method with arguments needs them");
    let live = SseClient::open(&format!("{}/live/list?args=%5B", a.url), None).await;
    assert_eq!(live.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_comments_flow_while_nothing_changes() {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = OfxSettings::default();
    settings.keep_alive = Duration::from_millis(50);
    let a = Host::start_with(&path, &dir, settings).await;
    let mut live = SseClient::open(
        &format!("{}/live/list?args={}", a.url, args(json!(["ann"]))),
        None,
    )
    .await;
    live.next().await;
    live.wait_comments(2, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_live_streams_cleanly_and_lets_the_server_stop() {
    let (a, _b) = two_hosts().await;
    let url = format!("{}/live/list?args={}", a.url, args(json!(["ann"])));
    let mut live = SseClient::open(&url, None).await;
    live.next().await;
    a.ofx.shutdown();
    assert_eq!(
        live.next_within(Duration::from_secs(5)).await,
        None,
        "the stream ends after shutdown"
    );
    a.stop().await.expect("the graceful shutdown finishes");
}
