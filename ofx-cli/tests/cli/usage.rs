//! `--help` for every subcommand, and clear errors (never a panic) for what cannot work.

use crate::common::{ofx, run};

#[tokio::test]
async fn every_subcommand_has_help() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--help"],
            "The operations command line of an ofx database",
        ),
        (&["tail", "--help"], "--follow"),
        (&["inspect", "--help"], "by its uuid"),
        (&["hosts", "--help"], "stale"),
        (&["lag", "--help"], "stale"),
        (&["trim", "--help"], "--older-than"),
        (&["events", "--help"], "redrive"),
        (&["events", "list", "--help"], "--state"),
        (&["events", "dead", "--help"], "Dead events"),
        (&["events", "redrive", "--help"], "--all-dead"),
        (&["events", "purge", "--help"], "--all-dead"),
        (&["state", "--help"], "quarantine"),
        (&["state", "status", "--help"], "snapshots"),
        (
            &["state", "quarantine", "--help"],
            "quarantined stream events",
        ),
    ];
    for (args, needle) in cases {
        let text = run(args).await.ok();
        assert!(text.contains(needle), "{args:?}: {needle:?} not in {text}");
        assert!(text.contains("--database-url"), "{args:?}: {text}");
        assert!(text.contains("--json"), "{args:?}: {text}");
    }
    let text = run(&["--help"]).await.ok();
    for subcommand in [
        "tail",
        "inspect",
        "hosts",
        "trim",
        "events",
        "state",
        "OFX_DATABASE_URL",
    ] {
        assert!(text.contains(subcommand), "{subcommand} not in {text}");
    }
}

#[tokio::test]
async fn errors_are_clear() {
    run(&["tail"]).await.fails(
        1,
        "no database: pass --database-url URL or set OFX_DATABASE_URL",
    );
    ofx("mysql://localhost/db", &["tail"])
        .await
        .fails(1, "unsupported database URL scheme `mysql://`");
    let missing = std::env::temp_dir().join(format!("ofx-cli-missing-{}.db", uuid::Uuid::new_v4()));
    let missing = missing.to_string_lossy().into_owned();
    ofx(&missing, &["tail"])
        .await
        .fails(1, "no SQLite database at");
    assert!(
        !std::path::Path::new(&missing).exists(),
        "nothing is created"
    );
    ofx(&format!("sqlite://{missing}"), &["hosts"])
        .await
        .fails(1, "no SQLite database at");
    // Nothing listens on port 1.
    ofx("postgres://postgres:secret@127.0.0.1:1/ofx", &["tail"])
        .await
        .fails(1, "cannot connect to the database");
    let refused = ofx("postgres://postgres:secret@127.0.0.1:1/ofx", &["hosts"]).await;
    assert!(!refused.stderr.contains("secret"), "{refused:?}");
    run(&["--database-url", "x.db", "frobnicate"])
        .await
        .fails(2, "unrecognized subcommand");
    run(&[
        "--database-url",
        "x.db",
        "trim",
        "--older-than",
        "5 fortnights",
    ])
    .await
    .fails(2, "unknown unit");

    // A SQLite file that is not an ofx database: the hint says what to do.
    let empty = std::env::temp_dir().join(format!("ofx-cli-empty-{}.db", uuid::Uuid::new_v4()));
    std::fs::write(&empty, b"").unwrap();
    let empty = empty.to_string_lossy().into_owned();
    ofx(&empty, &["hosts"]).await.fails(1, "--migrate");
    // With --migrate it becomes one.
    let text = ofx(&empty, &["--migrate", "hosts"]).await.ok();
    assert!(text.starts_with("log head: (empty log)"), "{text}");
    // The URL may come from the environment.
    let mut command = crate::common::command(&["tail", "--json"]);
    command.env("OFX_DATABASE_URL", &empty);
    let output = command.output().await.unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
    crate::common::remove_sqlite(&empty);
}
