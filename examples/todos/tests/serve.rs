//! `todos serve` over HTTP: the page, the commands, a live view updated across hosts,
//! `/status`, `/metrics`, and a clean stop on SIGTERM.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Served, SseClient, args};
use serde_json::json;

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

async fn post(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_serves_the_page_with_its_name() {
    let served = Served::start().await;
    for (url, name) in [(&served.a, "A"), (&served.b, "B")] {
        let (status, content_type, page) = get(url).await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(page.contains(&format!(r#"data-host="{name}""#)), "{page}");
        assert!(page.contains(&format!("host {name}</title>")), "{page}");
        let (status, content_type, script) = get(&format!("{url}app.js")).await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/javascript"));
        assert!(script.contains("new EventSource"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_answers_its_output_and_a_bad_one_its_error() {
    let served = Served::start().await;
    let (status, body) = post(
        &format!("{}commands/todos.add", served.a),
        json!({"owner": "alice", "title": "milk"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["title"], "milk");
    assert_eq!(body["output"]["owner"], "alice");
    assert_eq!(body["output"]["done"], false);
    assert!(body["sequence"].as_i64().unwrap() > 0, "{body}");
    let id = body["output"]["id"].as_i64().unwrap();

    let (status, body) = post(
        &format!("{}commands/todos.complete", served.b),
        json!({"id": id}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["done"], true);

    let (status, body) = post(
        &format!("{}commands/todos.add", served.a),
        json!({"owner": "alice", "title": " "}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "rejected");
    let (status, body) = post(
        &format!("{}commands/todos.log_activity", served.a),
        json!({"owner": "alice", "text": "forged"}),
    )
    .await;
    assert_eq!(status, 403, "a backend command: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_view_on_host_b_updates_after_a_command_on_host_a() {
    let served = Served::start().await;
    let alice = args(json!(["alice"]));
    let mut view = SseClient::open(&format!("{}live/view?args={alice}", served.b)).await;
    let mut figures = SseClient::open(&format!("{}live/figures?args={alice}", served.b)).await;
    let init = view.next().await.unwrap();
    assert_eq!(init.event, "init");
    assert_eq!(init.json(), json!({"Ok": []}));
    let init = figures.next().await.unwrap();
    assert_eq!(init.json()["Ok"]["added"], 0);

    let (status, body) = post(
        &format!("{}commands/todos.add", served.a),
        json!({"owner": "alice", "title": "from A"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let update = view.next().await.unwrap();
    assert_eq!(update.event, "update");
    assert_eq!(update.json()["Ok"][0]["title"], "from A", "{update:?}");
    let position: i64 = update.id.split_once('@').unwrap().1.parse().unwrap();
    assert!(
        position >= body["sequence"].as_i64().unwrap(),
        "the frame reflects the operation: {update:?} {body}"
    );
    // The state service on host B follows the history stream too (possibly in two steps).
    loop {
        let frame = figures.next().await.unwrap();
        if frame.json()["Ok"]["added"] == 1 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_answer() {
    let served = Served::start().await;
    for url in [&served.a, &served.b] {
        let (status, content_type, body) = get(&format!("{url}status")).await;
        assert_eq!(status, 200, "ready once serving: {body}");
        assert!(content_type.starts_with("application/json"));
        let statuses: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(statuses[0]["projection"], "todos.history");
        assert_eq!(statuses[0]["ready"], true);

        let (status, content_type, _) = get(&format!("{url}metrics")).await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/plain"), "{content_type}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_both_hosts_with_live_streams_open() {
    let served = Served::start().await;
    let alice = args(json!(["alice"]));
    let mut a = SseClient::open(&format!("{}live/view?args={alice}", served.a)).await;
    let mut b = SseClient::open(&format!("{}live/open_count?args={alice}", served.b)).await;
    a.next().await.unwrap();
    b.next().await.unwrap();
    let (status, took) = served.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(2),
        "stopped in {took:?}, streams open"
    );
    assert!(a.next().await.is_none(), "host A's stream ended");
    assert!(b.next().await.is_none(), "host B's stream ended");
}
