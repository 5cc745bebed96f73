//! `todos serve` in a child process (two hosts on a fresh SQLite file, free ports), and a
//! small server-sent events client.

#![allow(dead_code, unreachable_pub)] // each test binary uses a part

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// `todos serve` running: host A and host B's URLs (ending in `/`).
pub struct Served {
    child: Child,
    pub a: String,
    pub b: String,
    path: String,
}

impl Served {
    /// Starts `todos serve` with `OFX_PORTS=0,0` on a new SQLite file in the temporary
    /// directory (woken by the file-system watcher), and reads the two URLs it prints.
    pub async fn start() -> Self {
        let path = std::env::temp_dir()
            .join(format!(
                "ofx-todos-serve-{}.db",
                uuid::Uuid::new_v4().simple()
            ))
            .to_string_lossy()
            .into_owned();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_todos"))
            .arg("serve")
            .env("OFX_PORTS", "0,0")
            .env("OFX_DB", &path)
            .env("OFX_WATCHER", "fs")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut a, mut b) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.is_none() || b.is_none() {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .expect("`todos serve` prints both URLs within 30 s")
                .unwrap()
                .expect("`todos serve` is running");
            if let Some(url) = line.strip_prefix("host A: ") {
                a = Some(url.to_owned());
            } else if let Some(url) = line.strip_prefix("host B: ") {
                b = Some(url.to_owned());
            }
        }
        // Keep reading, so that the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            a: a.unwrap(),
            b: b.unwrap(),
            path,
        }
    }

    /// Sends SIGTERM and waits (at most 10 s) for the process to end: its status and how long
    /// it took.
    pub async fn terminate(mut self) -> (ExitStatus, Duration) {
        let pid = self.child.id().unwrap();
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("`todos serve` ends within 10 s of SIGTERM")
            .unwrap();
        (status, started.elapsed())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for file in [
            self.path.clone(),
            format!("{}-wal", self.path),
            format!("{}-shm", self.path),
        ] {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir_all(format!("{}.watch", self.path));
    }
}

/// `values` as a live route's `args` query parameter.
pub fn args(values: serde_json::Value) -> String {
    let mut encoded = String::new();
    for byte in values.to_string().bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub event: String,
    pub id: String,
    pub data: String,
}

impl Frame {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A server-sent events client over a plain response.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    pub async fn open(url: &str) -> Self {
        let response = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{url}");
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame (comments skipped), `None` when the stream ended; panics after 10 s.
    pub async fn next(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame::default();
                let mut any = false;
                for line in block.lines().filter(|line| !line.starts_with(':')) {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    any = true;
                    match field {
                        "event" => frame.event = value,
                        "id" => frame.id = value,
                        "data" => frame.data = value,
                        _ => {}
                    }
                }
                if any {
                    return Some(frame);
                }
            }
            let chunk = tokio::time::timeout_at(deadline.into(), self.response.chunk())
                .await
                .expect("a frame within 10 s")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}
