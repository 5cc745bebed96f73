//! The demo in a real browser: headless Chromium, driven through ChromeDriver (WebDriver),
//! opens host A's page and host B's page of `todos serve`; a todo added on A (typed, clicked)
//! shows on B without a reload, completing it on B shows on A; another is renamed on A and
//! removed on B. The latency from the click
//! to the other page's DOM update is measured from the timestamps the pages record, printed,
//! and written with screenshots of both pages to `target/browser-artifacts/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs): without them the test fails.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Served;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page may take to show what it must.
const DEADLINE: Duration = Duration::from_secs(15);
/// How many todos are added on host A.
const ADDS: usize = 3;

type Failure = Box<dyn std::error::Error>;

/// Written to the test's standard error directly, so that `cargo test` shows it (what
/// `println!` writes is captured).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Where the screenshots and the latencies go: `<target dir>/browser-artifacts/`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free port on 127.0.0.1 (free when asked).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// ChromeDriver on a free port, ready for sessions; killed when dropped.
struct ChromeDriver {
    _process: tokio::process::Child,
    url: String,
}

impl ChromeDriver {
    async fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run `apt-get install -y chromium chromium-driver` (what `.ci/run` does)"
            );
        }
        let port = free_port();
        let process = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(response) = reqwest::get(format!("{url}/status")).await
                && let Ok(status) = response.json::<serde_json::Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "ChromeDriver is not ready");
            tokio::time::sleep(Duration::from_millis(50)).await; // polling, with a deadline
        }
        Self {
            _process: process,
            url,
        }
    }

    /// A new headless Chromium session.
    async fn session(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=900,650"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

/// A number the page stored in `document.body.dataset`.
async fn stamp(page: &Client, name: &str) -> Result<f64, Failure> {
    let value = page
        .execute(&format!("return document.body.dataset.{name};"), vec![])
        .await?;
    Ok(value
        .as_str()
        .ok_or_else(|| format!("no {name} on the page"))?
        .parse()?)
}

/// Waits (with the deadline) until `page` has an element matching `css`.
async fn appears(page: &Client, css: &str) -> Result<(), Failure> {
    page.wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css(css))
        .await?;
    Ok(())
}

/// The scenario; the sessions are closed by the caller whatever happens.
async fn scenario(served: &Served, a: &Client, b: &Client) -> Result<String, Failure> {
    a.goto(&served.a).await?;
    b.goto(&served.b).await?;
    for (page, name) in [(a, "A"), (b, "B")] {
        appears(page, "#state.open").await?; // every live stream is connected
        let host = page.find(Locator::Id("host")).await?.text().await?;
        if host != name {
            return Err(format!("host {name}'s page says it is {host}").into());
        }
    }

    // The pages' clocks (`performance.timeOrigin + performance.now()`) against the wall
    // clock (`Date.now()`, whole milliseconds): the two pages' stamps compare if these agree.
    let mut offsets = Vec::new();
    for page in [a, b] {
        let offset = page
            .execute(
                "return performance.timeOrigin + performance.now() - Date.now();",
                vec![],
            )
            .await?;
        offsets.push(offset.as_f64().ok_or("no clock offset")?);
    }
    let skew = offsets[1] - offsets[0];

    // Add on A, typed and clicked: the first add is cold (first command, first recomputations
    // on both hosts); the next ones measure the latency again, warm.
    let mut added = Vec::new();
    let mut answered = Vec::new();
    let mut titles = Vec::new();
    for round in 1..=ADDS {
        let title = format!(
            "buy milk {round} {}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        a.find(Locator::Id("new-title"))
            .await?
            .send_keys(&title)
            .await?;
        a.find(Locator::Id("add")).await?.click().await?;
        let on_b = format!(r#"li[data-title="{title}"][data-done="false"]"#);
        appears(b, &on_b).await?;
        let clicked = stamp(a, "lastClickAt").await?;
        added.push(stamp(b, "lastUpdateAt").await? - clicked);
        appears(a, &on_b).await?;
        answered.push(stamp(a, "lastAnswerAt").await? - clicked);
        titles.push(title);
    }
    let title = &titles[0];
    let on_b = format!(r#"li[data-title="{title}"][data-done="false"]"#);

    // Complete on B, seen on A.
    b.find(Locator::Css(&format!(r#"{on_b} input.complete"#)))
        .await?
        .click()
        .await?;
    let done = format!(r#"li[data-title="{title}"][data-done="true"]"#);
    appears(a, &done).await?;
    let completed = stamp(a, "lastUpdateAt").await? - stamp(b, "lastClickAt").await?;
    appears(b, &done).await?;

    // Rename on A (through the page's prompt), seen on B; remove on B, gone from A.
    let second = format!(r#"li[data-title="{}"]"#, titles[1]);
    a.find(Locator::Css(&format!("{second} button.rename")))
        .await?
        .click()
        .await?;
    let renamed = format!("{} (renamed)", titles[1]);
    a.send_alert_text(&renamed).await?;
    a.accept_alert().await?;
    let renamed = format!(r#"li[data-title="{renamed}"]"#);
    appears(b, &renamed).await?;
    b.find(Locator::Css(&format!("{renamed} button.remove")))
        .await?
        .click()
        .await?;
    for page in [a, b] {
        page.wait()
            .at_most(DEADLINE)
            .for_element(Locator::XPath(&format!(
                "//ul[@id='todos' and count(li) = {}]",
                ADDS - 1
            )))
            .await?;
    }

    // The open count and the history's figures followed on both pages.
    for page in [a, b] {
        page.wait()
            .at_most(DEADLINE)
            .for_element(Locator::XPath(&format!(
                "//span[@id='open-count' and text()='{}']",
                ADDS - 2
            )))
            .await?;
        page.wait()
            .at_most(DEADLINE)
            .for_element(Locator::XPath(&format!(
                "//span[@id='figures' and starts-with(text(), '{ADDS} added, 1 completed, 1 removed')]"
            )))
            .await?;
    }

    let dir = artifacts();
    std::fs::write(dir.join("host-a.png"), a.screenshot().await?)?;
    std::fs::write(dir.join("host-b.png"), b.screenshot().await?)?;
    let warm = &added[1..];
    let summary = format!(
        "click→B DOM: {:.1} ms (add on host A, seen on host B; first add, cold)\n\
         click→B DOM: {:.1} ms (the same, warm: mean of {} more adds; each {warm:.1?})\n\
         click→A DOM: {completed:.1} ms (complete on host B, seen on host A)\n\
         click→A's command answered: {answered:.1?} ms (each add)\n\
         clock skew between the pages: {skew:.1} ms (±1 ms)\n",
        added[0],
        warm.iter().sum::<f64>() / warm.len() as f64,
        warm.len(),
    );
    std::fs::write(dir.join("latency.txt"), &summary)?;
    Ok(summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_todo_added_on_host_a_shows_on_host_b_without_reload() {
    let driver = ChromeDriver::start().await;
    let served = Served::start().await;
    let (a, b) = tokio::join!(driver.session(), driver.session());
    let outcome = scenario(&served, &a, &b).await;
    let _ = tokio::join!(a.close(), b.close());
    let summary = outcome.unwrap();
    report(&summary);
    report(&format!(
        "screenshots and latencies in {}",
        artifacts().display()
    ));
}
