//! Hostile tests of ofx-axum: its documented promises attacked through its public API, over
//! real HTTP (two hosts on one SQLite file woken by the file-system watcher). Every test here
//! passes and is kept as a regression test; the attacks that broke a promise are in
//! `findings.rs`, which is not compiled into this target.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)] // a failed unwrap is a failed test

mod findings;
#[path = "../kit/mod.rs"]
mod kit;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kit::{Host, SseClient, args, post, raw, temp_path, two_hosts, until};
use ofx_axum::{LiveFrameId, OfxSettings};
use serde_json::json;

fn one_host_dirs() -> (std::path::PathBuf, std::path::PathBuf) {
    let path = temp_path("db");
    let dir = temp_path("watch");
    std::fs::create_dir_all(&dir).unwrap();
    (path, dir)
}

fn fast_keep_alive() -> OfxSettings {
    let mut settings = OfxSettings::default();
    settings.keep_alive = Duration::from_millis(50);
    settings
}

// ---- commands ------------------------------------------------------------------------------

/// Names that are no command: empty, traversal, unicode, control characters, invalid UTF-8,
/// very long. None is a 500, none runs anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_command_names_are_refused_never_500_and_write_nothing() {
    let (a, _b) = two_hosts().await;
    let body = json!({"owner": "ann", "text": "x"}).to_string();
    let long = "n".repeat(16 * 1024);
    let names = [
        "".to_owned(),
        "/".to_owned(),
        "%2F".to_owned(),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        "..".to_owned(),
        "%2e%2e".to_owned(),
        "notes.add%2F".to_owned(),
        "notes.add%00".to_owned(),
        "notes.add%0A".to_owned(),
        "%E2%9C%93".to_owned(),
        "n%C3%B6tes.add".to_owned(),
        "%FF%FE".to_owned(),
        "%".to_owned(),
        "%zz".to_owned(),
        "notes.add%20".to_owned(),
        "NOTES.ADD".to_owned(),
        "notes.add/extra".to_owned(),
        "notes.purge_all%00".to_owned(),
        long.clone(),
    ];
    for name in &names {
        let url = format!("{}/commands/{name}", a.url);
        let response = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(
            matches!(status, 400 | 404 | 405 | 414 | 431),
            "{name:.60}: {status} {text:.200}"
        );
    }
    // A name of a megabyte: refused by the HTTP layer, the server stays up.
    let huge = "n".repeat(1 << 20);
    let request = format!(
        "POST /commands/{huge} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = raw(a.addr, request.as_bytes()).await;
    assert_ne!(status, Some(500), "{answer:.200}");
    assert_ne!(status, Some(200), "{answer:.200}");
    assert_eq!(a.notes.rows().await, 0);
    // A backend command is refused by its decoded name, however it is spelled.
    for name in [
        "notes.purge%5Fall",
        "notes%2Epurge_all",
        "%6Eotes.purge_all",
    ] {
        let (status, answer) = post(&format!("{}/commands/{name}", a.url), "null").await;
        assert_eq!(status, 403, "{name}: {answer}");
    }
    let (status, _) = post(&format!("{}/commands/notes.add", a.url), body).await;
    assert_eq!(status, 200, "the server still serves");
}

/// JSON nested far deeper than any decoder should follow, in the body and in a field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_400_not_a_crash() {
    let (a, _b) = two_hosts().await;
    let depth = 100_000;
    let bodies = [
        format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        "[".repeat(200_000),
        format!(
            "{{\"owner\": \"ann\", \"text\": {}{}}}",
            "{\"a\":".repeat(depth / 8),
            "}".repeat(depth / 8)
        ),
        format!(
            "{{\"owner\": {}\"ann\"{}, \"text\": \"x\"}}",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    ];
    for body in bodies {
        let (status, answer) = post(&format!("{}/commands/notes.add", a.url), body).await;
        assert_eq!(status, 400, "{answer:.200}");
        assert_eq!(answer["error"], "bad_json");
    }
    assert_eq!(a.notes.rows().await, 0);
}

/// Bodies that are not what the endpoint wants, by content type (415) or by bytes (400):
/// nothing written, never 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_the_wrong_kind_are_refused_and_write_nothing() {
    let (a, _b) = two_hosts().await;
    let url = format!("{}/commands/notes.add", a.url);
    let cases: [(&str, Vec<u8>); 7] = [
        (
            "application/x-www-form-urlencoded",
            b"owner=ann&text=x".to_vec(),
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\n\r\n--x--".to_vec(),
        ),
        ("application/json", vec![0xff, 0xfe, 0x00, 0x7b]),
        (
            "application/json",
            b"\xef\xbb\xbf{\"owner\":\"ann\",\"text\":\"bom\"}".to_vec(),
        ),
        ("application/json", Vec::new()),
        (
            "application/json",
            b"{\"owner\":\"ann\",\"text\":\"x\"} trailing".to_vec(),
        ),
        (
            "application/json",
            b"{\"owner\":\"ann\",\"text\":\"\\ud800\"}".to_vec(),
        ),
    ];
    for (content_type, body) in cases {
        let response = reqwest::Client::new()
            .post(&url)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let expected = if content_type == "application/json" {
            400
        } else {
            415
        };
        assert_eq!(status, expected, "{content_type} {body:?}: {text}");
    }
    assert_eq!(a.notes.rows().await, 0);
}

fn chunked(path: &str, body: &[u8], chunk: usize, finish: bool) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(chunk) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    if finish {
        request.extend_from_slice(b"0\r\n\r\n");
    }
    request
}

/// A chunked body (no content length) over the limit: 413 without reading it whole, nothing
/// written; one just under it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_413_and_writes_nothing() {
    let (path, dir) = one_host_dirs();
    let mut settings = OfxSettings::default();
    settings.max_command_body = 1024;
    let a = Host::start_with(&path, &dir, settings).await;
    let big = json!({"owner": "ann", "text": "x".repeat(4096)}).to_string();
    for chunk in [1, 100, 1000, 4096] {
        let (status, answer) = raw(
            a.addr,
            &chunked("/commands/notes.add", big.as_bytes(), chunk, true),
        )
        .await;
        assert_eq!(status, Some(413), "chunks of {chunk}: {answer:.300}");
        assert!(answer.contains("too_large"), "{answer:.300}");
    }
    // Over the limit and never finished: refused all the same.
    let (status, answer) = raw(
        a.addr,
        &chunked("/commands/notes.add", big.as_bytes(), 512, false),
    )
    .await;
    assert_eq!(status, Some(413), "{answer:.300}");
    assert_eq!(a.notes.rows().await, 0);
    let small = json!({"owner": "ann", "text": "x".repeat(900)}).to_string();
    let (status, answer) = raw(
        a.addr,
        &chunked("/commands/notes.add", small.as_bytes(), 10, true),
    )
    .await;
    assert_eq!(status, Some(200), "{answer:.300}");
    assert_eq!(a.notes.rows().await, 1);
}

/// A body cut short (the client closes before sending what it announced): nothing written,
/// no 200, no 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_writes_nothing() {
    let (a, _b) = two_hosts().await;
    let body = json!({"owner": "ann", "text": "cut"}).to_string();
    let head = format!(
        "POST /commands/notes.add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len() + 10
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body.as_bytes());
    // `raw` writes, then reads to the end; the server waits for 10 more bytes: close our
    // side by writing through a connection we shut down.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200") && !answer.starts_with("HTTP/1.1 500"),
        "{answer}"
    );
    // A chunked body whose client goes away mid-chunk.
    let mut stream = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let request = chunked("/commands/notes.add", body.as_bytes(), 8, false);
    stream
        .write_all(&request[..request.len() - 3])
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200") && !answer.starts_with("HTTP/1.1 500"),
        "{answer}"
    );
    let (status, _) = post(&format!("{}/commands/notes.add", a.url), body).await;
    assert_eq!(status, 200);
    assert_eq!(a.notes.rows().await, 1, "only the whole command wrote");
}

/// Many identical commands at once on two hosts of one SQLite file, with failing ones mixed
/// in: exactly the commands answered 200 are written, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_commands_write_exactly_what_was_answered_200() {
    let (a, b) = two_hosts().await;
    let mut tasks = Vec::new();
    for i in 0..48 {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        let (name, body) = if i % 3 == 2 {
            ("notes.add_then_fail", json!({"owner": "ann"}))
        } else {
            ("notes.add", json!({"owner": "ann", "text": "same"}))
        };
        let url = format!("{url}/commands/{name}");
        tasks.push(tokio::spawn(async move {
            (name, post(&url, body.to_string()).await)
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut committed = 0;
    for task in tasks {
        let (name, (status, body)) = task.await.unwrap();
        match (name, status) {
            ("notes.add", 200) => {
                committed += 1;
                assert!(ids.insert(body["output"]["id"].as_i64().unwrap()));
            }
            ("notes.add_then_fail", 422) => {}
            _ => panic!("{name}: {status} {body}"),
        }
    }
    assert_eq!(committed, 32);
    assert_eq!(a.notes.rows().await, committed);
    let listed = a.notes.direct_list("ann").await;
    assert!(
        listed["Ok"]
            .as_array()
            .unwrap()
            .iter()
            .all(|note| note["text"] == "same"),
        "a failed command left a partial write: {listed}"
    );
}

// ---- live values: bad requests -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_live_arguments_are_400_never_500() {
    let (a, _b) = two_hosts().await;
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let queries = [
        "?args=".to_owned(),
        "?args=null".to_owned(),
        "?args=%5B%5D".to_owned(),
        "?args=%7B%7D".to_owned(),
        format!("?args={}", args(json!(["ann", "bob"]))),
        format!("?args={}", args(json!([["ann"]]))),
        format!("?args={}", args(json!({"owner": "ann"}))),
        "?args=%FF".to_owned(),
        "?args=%".to_owned(),
        "?args=%5B%22ann%22%5D&args=%5B%22bob%22%5D".to_owned(),
        format!("?args={}", args(json!(deep))),
        format!("?args={}", deep.replace('[', "%5B").replace(']', "%5D")),
        "?args=%5B%22%5Cud800%22%5D".to_owned(),
        "?args=%5B%22ann%22".to_owned(),
        "?args=%5B1e999%5D".to_owned(),
    ];
    for query in &queries {
        let live = SseClient::open(&format!("{}/live/list{query}", a.url), None).await;
        assert_eq!(live.status, 400, "{:.80}", query);
    }
    for query in [
        format!("?args={}", args(json!([-1]))),
        format!("?args={}", args(json!([1.5]))),
        format!("?args={}", args(json!([u64::MAX as f64 * 2.0]))),
        format!("?args={}", args(json!(["1"]))),
        "?args=%5B18446744073709551616%5D".to_owned(),
    ] {
        let live = SseClient::open(&format!("{}/live/slow{query}", a.url), None).await;
        assert_eq!(live.status, 400, "{query:.80}");
    }
    // Garbage `Last-Event-ID`s are ignored: the current value at once.
    for last in [
        "",
        "x",
        "1@",
        "@1",
        "-1",
        "99999999999999999999@1",
        "1@1@1",
        " 7 ",
    ] {
        let mut live = SseClient::open(
            &format!("{}/live/list?args={}", a.url, args(json!(["ann"]))),
            Some(last),
        )
        .await;
        assert_eq!(live.status, 200, "{last:?}");
        let init = live.next().await;
        assert_eq!(init.event.as_deref(), Some("init"));
        assert_eq!(init.json(), json!({"Ok": []}));
    }
}

// ---- live values: no lost update -----------------------------------------------------------

/// Writers on both hosts while clients watch `list` and `count` on both: once the writes are
/// done, every client's last frame is what a direct read of the database says, and versions
/// only grow along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_on_two_hosts_every_client_ends_on_a_direct_read() {
    let (a, b) = two_hosts().await;
    let list_url = |host: &Host| format!("{}/live/list?args={}", host.url, args(json!(["ann"])));
    let count_url = |host: &Host| format!("{}/live/count?args={}", host.url, args(json!(["ann"])));
    let mut clients = Vec::new();
    for url in [list_url(&a), list_url(&b), count_url(&a), count_url(&b)] {
        let mut client = SseClient::open(&url, None).await;
        let init = client.next().await;
        let version = init.id.as_deref().unwrap().parse::<LiveFrameId>().unwrap();
        clients.push((client, version.version));
    }
    let mut writers = Vec::new();
    for writer in 0..6 {
        let url = if writer % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for n in 0..8 {
                let owner = if n % 3 == 2 { "bob" } else { "ann" };
                let (status, body) = post(
                    &format!("{url}/commands/notes.add"),
                    json!({"owner": owner, "text": format!("w{writer}n{n}")}).to_string(),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                last = last.max(body["sequence"].as_i64().unwrap());
            }
            last
        }));
    }
    let mut last_sequence = 0;
    for writer in writers {
        last_sequence = last_sequence.max(writer.await.unwrap());
    }
    a.wait_position(last_sequence).await;
    b.wait_position(last_sequence).await;
    let expected_list = a.notes.direct_list("ann").await;
    let expected_count = json!({"Ok": expected_list["Ok"].as_array().unwrap().len()});
    for (index, (client, version)) in clients.iter_mut().enumerate() {
        let expected = if index < 2 {
            &expected_list
        } else {
            &expected_count
        };
        client.until_json(expected, version).await;
    }
}

/// A change committed while the stream recomputes the value (after the computation read the
/// database, before it returned) is not lost: the stale result is followed by the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_racing_the_streams_recomputation_is_not_lost() {
    for remote in [false, true] {
        let (a, b) = two_hosts().await;
        // The client watches B; the change is made on B (local) or on A (replayed on B).
        let mut live = SseClient::open(
            &format!("{}/live/list?args={}", b.url, args(json!(["ann"]))),
            None,
        )
        .await;
        let init = live.next().await;
        let mut version = init
            .id
            .as_deref()
            .unwrap()
            .parse::<LiveFrameId>()
            .unwrap()
            .version;
        let (entered, release) = b.notes.arm_gate("ann");
        b.notes.touch_list("ann"); // the stream recomputes, and stops inside the gate
        tokio::time::timeout(Duration::from_secs(10), entered)
            .await
            .expect("the stream did not recompute")
            .unwrap();
        let writer = if remote { &a } else { &b };
        let (status, body) = post(
            &format!("{}/commands/notes.add", writer.url),
            json!({"owner": "ann", "text": "raced"}).to_string(),
        )
        .await;
        assert_eq!(status, 200);
        b.wait_position(body["sequence"].as_i64().unwrap()).await;
        release.send(()).unwrap();
        let expected = b.notes.direct_list("ann").await;
        live.until_json(&expected, &mut version).await;
    }
}

/// A change made while the client is away, committed on the other host just as the client
/// reconnects: the client ends on the changed value (at once or by an update).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_the_client_reconnects_reaches_it() {
    let (a, b) = two_hosts().await;
    let url = format!("{}/live/count?args={}", b.url, args(json!(["ann"])));
    let mut live = SseClient::open(&url, None).await;
    let mut last = live.next().await;
    for round in 1..=10 {
        drop(live);
        let url_a = a.url.clone();
        let write = tokio::spawn(async move {
            post(
                &format!("{url_a}/commands/notes.add"),
                json!({"owner": "ann", "text": format!("r{round}")}).to_string(),
            )
            .await
        });
        live = SseClient::open(&url, last.id.as_deref()).await;
        let init = live.next().await;
        assert_eq!(init.event.as_deref(), Some("init"));
        let (status, _) = write.await.unwrap();
        assert_eq!(status, 200);
        let mut version = init
            .id
            .as_deref()
            .unwrap()
            .parse::<LiveFrameId>()
            .unwrap()
            .version;
        last = if init.json() == json!({"Ok": round}) {
            init
        } else {
            live.until_json(&json!({"Ok": round}), &mut version)
                .await
                .pop()
                .unwrap()
        };
    }
}

/// Many streams on one value, on both hosts, while it changes: every one ends on the latest
/// value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_on_one_value_all_end_on_the_latest_value() {
    let (a, b) = two_hosts().await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let host = if i % 2 == 0 { &a } else { &b };
        let mut client = SseClient::open(
            &format!("{}/live/count?args={}", host.url, args(json!(["ann"]))),
            None,
        )
        .await;
        let init = client.next().await;
        let version = init.id.as_deref().unwrap().parse::<LiveFrameId>().unwrap();
        clients.push((client, version.version));
    }
    let mut last_sequence = 0;
    for n in 0..10 {
        let host = if n % 2 == 0 { &a } else { &b };
        let (status, body) = post(
            &format!("{}/commands/notes.add", host.url),
            json!({"owner": "ann", "text": format!("n{n}")}).to_string(),
        )
        .await;
        assert_eq!(status, 200);
        last_sequence = body["sequence"].as_i64().unwrap();
    }
    a.wait_position(last_sequence).await;
    b.wait_position(last_sequence).await;
    for (client, version) in &mut clients {
        client.until_json(&json!({"Ok": 10}), version).await;
    }
}

/// A frame whose id says position `p` reflects every operation at or below `p`: checked for
/// every frame a client on host B sees while host A writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_reflects_the_log_position_in_its_id() {
    let (a, b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/list?args={}", b.url, args(json!(["ann"]))),
        None,
    )
    .await;
    let url_a = a.url.clone();
    let writer = tokio::spawn(async move {
        let mut sequences = Vec::new();
        for n in 0..20 {
            let (status, body) = post(
                &format!("{url_a}/commands/notes.add"),
                json!({"owner": "ann", "text": format!("n{n}")}).to_string(),
            )
            .await;
            assert_eq!(status, 200);
            sequences.push((
                body["sequence"].as_i64().unwrap(),
                body["output"]["id"].as_i64().unwrap(),
            ));
        }
        sequences
    });
    let mut frames = vec![live.next().await];
    loop {
        let frame = live.next().await;
        let done = frame.json()["Ok"].as_array().unwrap().len() == 20;
        frames.push(frame);
        if done {
            break;
        }
    }
    let sequences = writer.await.unwrap();
    let mut last: Option<LiveFrameId> = None;
    for frame in &frames {
        let id: LiveFrameId = frame.id.as_deref().unwrap().parse().unwrap();
        if let Some(last) = last {
            assert!(id.version > last.version, "{last} then {id}");
            assert!(id.position >= last.position, "{last} then {id}");
        }
        last = Some(id);
        let position = id.position.unwrap();
        let ids: Vec<i64> = frame.json()["Ok"]
            .as_array()
            .unwrap()
            .iter()
            .map(|note| note["id"].as_i64().unwrap())
            .collect();
        for (sequence, note) in &sequences {
            if *sequence <= position {
                assert!(
                    ids.contains(note),
                    "frame {id} misses note {note} of operation {sequence}: {}",
                    frame.data
                );
            }
        }
    }
}

/// A commit that invalidates something else costs an open stream nothing: no recomputation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_changes_something_else_costs_a_stream_nothing() {
    let (a, b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/list?args={}", b.url, args(json!(["ann"]))),
        None,
    )
    .await;
    live.next().await;
    let before = b.notes.list_computations_of("ann");
    let mut last = 0;
    for n in 0..10 {
        let (status, body) = post(
            &format!("{}/commands/notes.add", a.url),
            json!({"owner": "bob", "text": format!("n{n}")}).to_string(),
        )
        .await;
        assert_eq!(status, 200);
        last = body["sequence"].as_i64().unwrap();
    }
    b.wait_position(last).await;
    let (_, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "mine"}).to_string(),
    )
    .await;
    let frame = live.next().await;
    assert_eq!(frame.json()["Ok"][0]["id"], body["output"]["id"]);
    assert_eq!(
        b.notes.list_computations_of("ann") - before,
        1,
        "bob's notes made ann's stream recompute"
    );
}

// ---- live values: slow, gone and failing clients and values --------------------------------

/// A client that never reads (a raw connection with a small receive buffer): the stream stops
/// computing frames once the socket buffers are full, however often the value changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_a_bounded_number_of_frames() {
    let (path, dir) = one_host_dirs();
    let a = Host::start(&path, &dir).await;
    let _client = never_reading_client(a.addr, "/live/blob").await;
    until("the init frame is computed", || {
        a.notes.blob_computations.load(Ordering::SeqCst) >= 1
    })
    .await;
    let blocked = fill_until_blocked(&a).await;
    assert!(
        blocked,
        "64 frames of 1 MiB were computed for a client that never reads"
    );
    let computed = a.notes.blob_computations.load(Ordering::SeqCst);
    for _ in 0..200 {
        a.notes.bump_blob();
    }
    // The stream is not polled: no computation (it would have happened at once).
    tokio::task::yield_now().await;
    assert!(
        a.notes.blob_computations.load(Ordering::SeqCst) <= computed + 1,
        "frames computed for a client that cannot take them"
    );
}

/// Opens a live stream on a raw connection with a small receive buffer that is never read.
pub async fn never_reading_client(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

/// Changes the blob until its stream stops computing (the connection cannot take more):
/// whether it did within 64 changes.
async fn fill_until_blocked(host: &Host) -> bool {
    for _ in 0..64 {
        let before = host.notes.blob_computations.load(Ordering::SeqCst);
        host.notes.bump_blob();
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        loop {
            if host.notes.blob_computations.load(Ordering::SeqCst) > before {
                break;
            }
            if std::time::Instant::now() > deadline {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    false
}

/// Clients that connect and go away, many times: every stream lets go of what it held (the
/// service `Arc` each stream clones), without waiting for a keep-alive to notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_clients_release_their_streams() {
    let (path, dir) = one_host_dirs();
    let a = Host::start_full(&path, &dir, OfxSettings::default(), Some(64)).await;
    let baseline = Arc::strong_count(&a.notes);
    for round in 0..5 {
        let mut clients = Vec::new();
        for i in 0..40 {
            let owner = format!("o{round}-{i}");
            let mut client = SseClient::open(
                &format!("{}/live/list?args={}", a.url, args(json!([owner]))),
                None,
            )
            .await;
            client.next().await;
            clients.push(client);
        }
        assert!(Arc::strong_count(&a.notes) >= baseline + 40);
        drop(clients);
        until("the streams of dropped clients ended", || {
            Arc::strong_count(&a.notes) == baseline
        })
        .await;
    }
    // The cache stays within its capacity (and an eighth) once nothing computes.
    assert!(
        a.hub.cached_len() <= 64 + 64 / 8 + 1,
        "{} cached",
        a.hub.cached_len()
    );
    // Nothing recomputes for the streams that are gone.
    let before = a.notes.list_computations.load(Ordering::SeqCst);
    a.hub.invalidate_everything();
    let (status, _) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "o0-0", "text": "x"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(a.notes.list_computations.load(Ordering::SeqCst), before);
}

/// A client that goes away while its stream computes a value that never ends: the computation
/// is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_computation_drops_the_computation() {
    let (path, dir) = one_host_dirs();
    let a = Host::start(&path, &dir).await;
    for key in 0..5_u64 {
        let live = reqwest::Client::new()
            .get(format!("{}/live/slow?args={}", a.url, args(json!([key]))))
            .send();
        // The response head comes with the first frame: send the request in a task.
        let request = tokio::spawn(live);
        until("the computation started", || {
            a.notes.slow_in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
        request.abort();
        let _ = request.await;
        until("the computation was dropped", || {
            a.notes.slow_in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
    }
}

/// `Ofx::shutdown` while a stream computes a value that never ends, while others wait on their
/// values, and while a keep-alive flows: all end, the graceful shutdown finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_mid_computation_and_waiting() {
    let (path, dir) = one_host_dirs();
    let a = Host::start_with(&path, &dir, fast_keep_alive()).await;
    let slow = tokio::spawn(
        reqwest::Client::new()
            .get(format!("{}/live/slow?args={}", a.url, args(json!([1]))))
            .send(),
    );
    let mut waiting = Vec::new();
    for owner in ["ann", "bob", "cid"] {
        let mut live = SseClient::open(
            &format!("{}/live/list?args={}", a.url, args(json!([owner]))),
            None,
        )
        .await;
        live.next().await;
        waiting.push(live);
    }
    // One stream in the middle of a recomputation held by the gate.
    let (entered, _release) = a.notes.arm_gate("ann");
    a.notes.touch_list("ann");
    tokio::time::timeout(Duration::from_secs(10), entered)
        .await
        .unwrap()
        .unwrap();
    until("the slow computation started", || {
        a.notes.slow_in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    a.stop().await.expect("the graceful shutdown finishes");
    for mut live in waiting {
        while live.next_within(Duration::from_secs(5)).await.is_some() {}
    }
    slow.abort();
}

/// A panicking compute method ends its own streams with an error frame; streams of other
/// values computed from the same dependency go on updating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_compute_method_ends_only_its_own_stream() {
    let (a, _b) = two_hosts().await;
    let open = |key: u64| {
        let url = format!("{}/live/flaky?args={}", a.url, args(json!([key])));
        async move { SseClient::open(&url, None).await }
    };
    let mut healthy = open(1).await;
    let mut doomed = open(2).await;
    let mut doomed_too = open(2).await;
    assert_eq!(healthy.next().await.json(), json!(1001));
    assert_eq!(doomed.next().await.json(), json!(1002));
    assert_eq!(doomed_too.next().await.json(), json!(1002));
    a.notes.panic_keys.lock().unwrap().insert(2);
    a.notes.bump_base();
    assert_eq!(healthy.next().await.json(), json!(2001));
    for doomed in [&mut doomed, &mut doomed_too] {
        let frame = doomed.next().await;
        assert_eq!(frame.event.as_deref(), Some("error"), "{frame:?}");
        assert_eq!(doomed.next_within(Duration::from_secs(5)).await, None);
    }
    a.notes.bump_base();
    assert_eq!(healthy.next().await.json(), json!(3001));
    a.notes.panic_keys.lock().unwrap().clear();
    let mut again = open(2).await;
    assert_eq!(again.next().await.json(), json!(3002));
}

/// A value that cannot be encoded ends its stream with an `error` frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_cannot_be_encoded_ends_the_stream_with_an_error_frame() {
    let (a, _b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/unencodable?args={}", a.url, args(json!([0]))),
        None,
    )
    .await;
    let frame = live.next().await;
    assert_eq!(frame.event.as_deref(), Some("error"), "{frame:?}");
    assert!(frame.data.contains("could not be encoded"), "{frame:?}");
    assert_eq!(live.next_within(Duration::from_secs(5)).await, None);
}

/// 40 live values without dependencies with a capacity of 64: once every stream sent its
/// value, nothing recomputes (compare `finding_streams_within_the_capacity_do_not_recompute_forever`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_values_without_dependencies_within_the_capacity_settle() {
    let (path, dir) = one_host_dirs();
    let a = Host::start_full(&path, &dir, OfxSettings::default(), Some(64)).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut client = SseClient::open(
            &format!(
                "{}/live/list?args={}",
                a.url,
                args(json!([format!("o{i}")]))
            ),
            None,
        )
        .await;
        client.next().await;
        clients.push(client);
    }
    let settled = a.notes.list_computations.load(Ordering::SeqCst);
    // A change to one value: exactly one recomputation, one frame.
    let (status, _) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "o7", "text": "x"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(clients[7].next().await.json()["Ok"][0]["text"], "x");
    assert_eq!(
        a.notes.list_computations.load(Ordering::SeqCst),
        settled + 1
    );
}

/// Keep-alives flow while a stream waits for a slow computation too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_flow_during_a_slow_computation() {
    let (path, dir) = one_host_dirs();
    let a = Host::start_with(&path, &dir, fast_keep_alive()).await;
    let mut live = SseClient::open(
        &format!("{}/live/slow?args={}", a.url, args(json!([9]))),
        None,
    )
    .await;
    assert_eq!(live.status, 200);
    assert!(live.content_type.starts_with("text/event-stream"));
    live.wait_comments(3, Duration::from_secs(10)).await;
}

/// A value whose encoding fails with a message holding a carriage return and a newline: the
/// `error` frame still goes out (a field value may hold neither: the message is split).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoding_error_over_two_lines_still_sends_an_error_frame() {
    let (a, _b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/unencodable?args={}", a.url, args(json!([1]))),
        None,
    )
    .await;
    assert_eq!(live.status, 200);
    let frame = live.next_within(Duration::from_secs(10)).await;
    assert_eq!(
        frame.as_ref().and_then(|frame| frame.event.as_deref()),
        Some("error"),
        "{frame:?}"
    );
}

/// After `Ofx::shutdown`, on a server that keeps running: open streams end, new ones are 503,
/// commands still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_streams_are_503_and_commands_still_run() {
    let (a, _b) = two_hosts().await;
    let ofx = ofx_axum::Ofx::builder(&a.hub)
        .service(a.notes.clone())
        .build();
    let app = axum::Router::new()
        .nest("/commands", ofx.command_router())
        .route("/live/list", ofx.live(&a.notes, kit::Notes::list_method()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        }
    });
    let live_url = format!("{url}/live/list?args={}", args(json!(["ann"])));
    let mut live = SseClient::open(&live_url, None).await;
    live.next().await;
    ofx.shutdown();
    assert!(ofx.is_shut_down());
    assert_eq!(live.next_within(Duration::from_secs(5)).await, None);
    let refused = SseClient::open(&live_url, None).await;
    assert_eq!(refused.status, 503);
    let (status, body) = post(
        &format!("{url}/commands/notes.add"),
        json!({"owner": "ann", "text": "after"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

/// A `HEAD` of a live route answers without a body and holds nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_of_a_live_route_holds_nothing() {
    let (path, dir) = one_host_dirs();
    let a = Host::start(&path, &dir).await;
    let baseline = Arc::strong_count(&a.notes);
    for _ in 0..20 {
        let response = reqwest::Client::new()
            .head(format!("{}/live/list?args={}", a.url, args(json!(["ann"]))))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.unwrap(), "");
    }
    until("the HEAD requests' streams were dropped", || {
        Arc::strong_count(&a.notes) == baseline
    })
    .await;
}

/// The frame ids' positions hold for writes made on the client's own host as well as on the
/// other, concurrently: a frame at position `p` shows every note of an operation at or below
/// `p`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_reflects_its_position_with_local_and_remote_writers() {
    let (a, b) = two_hosts().await;
    let mut live = SseClient::open(
        &format!("{}/live/list?args={}", b.url, args(json!(["ann"]))),
        None,
    )
    .await;
    let mut writers = Vec::new();
    for writer in 0..4 {
        let url = if writer % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for n in 0..10 {
                let (status, body) = post(
                    &format!("{url}/commands/notes.add"),
                    json!({"owner": "ann", "text": format!("w{writer}n{n}")}).to_string(),
                )
                .await;
                assert_eq!(status, 200);
                written.push((
                    body["sequence"].as_i64().unwrap(),
                    body["output"]["id"].as_i64().unwrap(),
                ));
            }
            written
        }));
    }
    let mut frames = vec![live.next().await];
    loop {
        let frame = live.next().await;
        let done = frame.json()["Ok"].as_array().unwrap().len() == 40;
        frames.push(frame);
        if done {
            break;
        }
    }
    let mut written = Vec::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    for frame in &frames {
        let id: LiveFrameId = frame.id.as_deref().unwrap().parse().unwrap();
        let ids: Vec<i64> = frame.json()["Ok"]
            .as_array()
            .unwrap()
            .iter()
            .map(|note| note["id"].as_i64().unwrap())
            .collect();
        for (sequence, note) in &written {
            if *sequence <= id.position.unwrap() {
                assert!(
                    ids.contains(note),
                    "frame {id} misses note {note} of operation {sequence}"
                );
            }
        }
    }
}

/// A change committed on the other host while the stream computes its *first* value (after
/// the computation read the database): the stale `init` is followed by the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_racing_the_init_computation_is_not_lost() {
    let (a, b) = two_hosts().await;
    let (entered, release) = b.notes.arm_gate("ann");
    let url = format!("{}/live/list?args={}", b.url, args(json!(["ann"])));
    // The response head comes with the first frame: open in a task.
    let opening = tokio::spawn(async move { SseClient::open(&url, None).await });
    tokio::time::timeout(Duration::from_secs(10), entered)
        .await
        .expect("the stream did not compute")
        .unwrap();
    let (status, body) = post(
        &format!("{}/commands/notes.add", a.url),
        json!({"owner": "ann", "text": "raced the init"}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    b.wait_position(body["sequence"].as_i64().unwrap()).await;
    release.send(()).unwrap();
    let mut live = opening.await.unwrap();
    let init = live.next().await;
    assert_eq!(init.event.as_deref(), Some("init"));
    let expected = b.notes.direct_list("ann").await;
    if init.json() != expected {
        let mut version = init
            .id
            .as_deref()
            .unwrap()
            .parse::<LiveFrameId>()
            .unwrap()
            .version;
        live.until_json(&expected, &mut version).await;
    }
}
