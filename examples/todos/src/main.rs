//! The ofx demo: todos in SQLite (a file in the temp directory; no server), cached compute
//! methods, a dependent value, and commands logged in the same transaction as their writes whose
//! invalidation branches make exactly the stale values recompute, shown in the log.
//!
//! Run with `cargo run -p todos`. The second part runs two hosts on the same file, woken by the
//! file-system watcher; `OFX_WATCHER=postgres` (LISTEN/NOTIFY on the server in
//! `OFX_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/postgres`) or `OFX_WATCHER=redis`
//! (`OFX_REDIS`, default `redis://127.0.0.1:6379`) wakes them through a server instead, and
//! `OFX_WATCHER=none` leaves them to polling.
//!
//! `cargo run -p todos -- serve` serves the web page on two hosts instead (see [`serve`]).

use std::sync::atomic::Ordering;

use ofx_core::{Hub, capture};
use ofx_diesel::{DbHub, DbSettings, Sqlite};
use todos::{AddTodo, CompleteTodo, RemoveTodo, RenameTodo, Todos};
use tracing::info;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, path] = args.as_slice() {
        match mode.as_str() {
            "follow" => return follow(path).await,
            "check" => return check(path).await,
            _ => {}
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    match args.get(1).map(String::as_str) {
        None => {}
        Some("serve") if args.len() == 2 => return serve().await,
        Some(_) => {
            return Err(
                "usage: todos [serve] (or `todos follow|check <db>`, for the tests)".into(),
            );
        }
    }

    let path = std::env::temp_dir().join(format!("ofx-todos-{}.db", uuid::Uuid::new_v4().simple()));
    let path = path.to_string_lossy().into_owned();
    info!(%path, "todos live in SQLite");
    let which = std::env::var("OFX_WATCHER").unwrap_or_else(|_| "fs".to_owned());
    let watch_dir = std::env::temp_dir().join(format!("ofx-todos-watch-{}", std::process::id()));
    // A host in three steps: the database (and how other hosts wake this one), the hub with
    // it (its log reader, trimmer and watcher start here), the service.
    let db = DbHub::<Sqlite>::open(&path, DbSettings::default()).await?;
    set_watcher(&db, &which, &watch_dir)?;
    let (hub, todos) = Todos::start(db.clone()).await?;
    let commander = hub.commander();
    let alice = || "alice".to_owned();
    commander
        .call(AddTodo {
            owner: alice(),
            title: "write the docs".into(),
        })
        .await?;
    commander
        .call(AddTodo {
            owner: alice(),
            title: "ship it".into(),
        })
        .await?;

    info!("1. first call: open_count computes, and computes list and get as its dependencies");
    let (open, computed) = capture(todos.open_count(alice())).await?;
    let open = open?;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );
    info!(
        dependencies = computed.dependencies().len(),
        "open_count depends on list + 2 × get"
    );

    info!("2. second call: served from the cache, nothing is computed");
    let open = todos.open_count(alice()).await?;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );

    info!(
        "3. CompleteTodo(1): its invalidation branch invalidates get(1), and through it open_count(alice)"
    );
    commander.call(CompleteTodo { id: 1 }).await?;
    info!(state = ?computed.state(), "the old open_count(alice)");

    info!("4. next call: open_count and get(1) are recomputed; list and get(2) are still cached");
    let open = todos.open_count(alice()).await?;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );

    info!(
        "5. RenameTodo(2) invalidates get(2) only; RemoveTodo(2) passes the owner to its invalidation branch"
    );
    commander
        .call(RenameTodo {
            id: 2,
            title: "ship it today".into(),
        })
        .await?;
    commander.call(RemoveTodo { id: 2 }).await?;
    let open = todos.open_count(alice()).await?;
    info!(
        open,
        reads = todos.reads.load(Ordering::SeqCst),
        "open_count(alice)"
    );

    info!("6. every command logged activity through a nested command, invalidated with it");
    for line in todos.activity(alice()).await? {
        info!(%line, "activity(alice)");
    }
    two_hosts(&path, &hub, &which, &watch_dir).await?;

    let mut connection = db.connection().await?;
    let logged: i64 = diesel_async::RunQueryDsl::get_result(
        diesel::dsl::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT COUNT(*) FROM ofx_operations)",
        )),
        &mut *connection,
    )
    .await?;
    info!(
        logged,
        "operations in the log, each written in its command's transaction"
    );
    drop(connection);
    drop(db);
    for file in [path.clone(), format!("{path}-wal"), format!("{path}-shm")] {
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}

/// Wakes this host's log reader when another host commits, and the others when this one does,
/// through the transport `which` names: `fs` (the default), `postgres`, `redis` or `none`.
fn set_watcher(
    db: &DbHub<Sqlite>,
    which: &str,
    watch_dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    match which {
        "none" => {}
        "postgres" => {
            let url = std::env::var("OFX_POSTGRES")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
            db.set_watcher(ofx_watchers::PgWatcher::factory(&url, "todos"))?;
        }
        "redis" => {
            let url =
                std::env::var("OFX_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            db.set_watcher(ofx_watchers::RedisWatcher::factory(&url, "todos"))?;
        }
        _ => db.set_watcher(ofx_watchers::FsWatcher::factory(watch_dir, "todos"))?,
    }
    Ok(())
}

/// Host B on the same database, woken by a watcher: its cached value goes stale when host A
/// commits, and is recomputed.
async fn two_hosts(
    path: &str,
    hub_a: &Hub,
    which: &str,
    watch_dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::time::Instant;

    info!(watcher = %which, "7. host B opens the same database; a watcher wakes its log reader");
    let db_b = DbHub::<Sqlite>::open(path, DbSettings::default()).await?;
    set_watcher(&db_b, which, watch_dir)?;
    let (_hub_b, todos_b) = Todos::start(db_b.clone()).await?;

    for round in 1..=3 {
        let (open, computed) = capture(todos_b.open_count("alice".to_owned())).await?;
        info!(open = open?, "host B: open_count(alice) cached");
        let started = Instant::now();
        hub_a
            .commander()
            .call(AddTodo {
                owner: "alice".into(),
                title: format!("from host A, round {round}"),
            })
            .await?;
        let committed = Instant::now();
        computed.when_invalidated().await;
        let latency = committed.elapsed();
        let open = todos_b.open_count("alice".to_owned()).await?;
        info!(
            open,
            commit_us = (committed - started).as_micros(),
            commit_to_invalidation_us = latency.as_micros(),
            "host B: stale after host A's command, recomputed"
        );
    }
    Ok(())
}

/// `todos serve`: two hosts (two hubs on two connections) on one SQLite file, each serving the
/// web app ([`todos::web`]) on its own port, until Ctrl-C or SIGTERM.
///
/// - `OFX_DB`: the SQLite file (default: a new file in the temporary directory, removed at the
///   end).
/// - `OFX_PORTS=a,b`: the ports of hosts A and B on 127.0.0.1 (default `8080,8081`; `0` for a
///   free port). The URLs are printed on standard output, `host A: http://127.0.0.1:8080/`.
/// - `OFX_WATCHER`: how the hosts wake each other, as in the console demo (`fs` by default,
///   through the directory `<db>.watch`).
async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;

    let (path, temporary) = match std::env::var("OFX_DB") {
        Ok(path) => (path, false),
        Err(_) => {
            let path = std::env::temp_dir()
                .join(format!("ofx-todos-{}.db", uuid::Uuid::new_v4().simple()));
            (path.to_string_lossy().into_owned(), true)
        }
    };
    let ports = ports()?;
    let which = std::env::var("OFX_WATCHER").unwrap_or_else(|_| "fs".to_owned());
    let watch_dir = std::path::PathBuf::from(format!("{path}.watch"));
    info!(%path, watcher = %which, "two hosts on one SQLite file");
    // One recorder per process: both hosts render it (ofx labels its metrics by host).
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut hosts = Vec::new();
    let mut servers = Vec::new();
    let mut urls = Vec::new();
    for (name, port) in [("A", ports[0]), ("B", ports[1])] {
        let db = DbHub::<Sqlite>::open(&path, DbSettings::default()).await?;
        set_watcher(&db, &which, &watch_dir)?;
        let (hub, todos) = Todos::start(db).await?;
        let (app, _) = todos::web::app(name, &todos, shutdown.clone(), Some(metrics.clone()));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        urls.push(format!("host {name}: http://{}/", listener.local_addr()?));
        let stop = shutdown.clone().cancelled_owned();
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }));
        hosts.push((hub, todos));
    }
    let mut stdout = std::io::stdout();
    for url in &urls {
        writeln!(stdout, "{url}")?;
    }
    writeln!(stdout, "Ctrl-C stops both")?;
    stdout.flush()?;

    stopped().await?;
    info!("stopping: the live streams end, the servers finish their requests");
    shutdown.cancel();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    for server in servers {
        match tokio::time::timeout_at(deadline, server).await {
            Ok(served) => served??,
            Err(_) => tracing::warn!("a server did not finish within a second: leaving it"),
        }
    }
    drop(hosts);
    if temporary {
        for file in [path.clone(), format!("{path}-wal"), format!("{path}-shm")] {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir_all(&watch_dir);
    }
    Ok(())
}

/// The two ports of `OFX_PORTS` (`a,b`), `8080,8081` by default.
fn ports() -> Result<[u16; 2], Box<dyn std::error::Error>> {
    let Ok(text) = std::env::var("OFX_PORTS") else {
        return Ok([8080, 8081]);
    };
    let bad = || format!("OFX_PORTS must be two ports, `a,b` (0: any free port), not `{text}`");
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    Ok([
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ])
}

/// Until Ctrl-C (SIGINT) or SIGTERM.
async fn stopped() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// `todos follow <db>`: a second host in its own process. It caches alice's list, then prints
/// `invalidated` and the recomputed list each time another process's command makes it stale
/// (the log reader replays the operation), until its standard input closes.
async fn follow(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    let mut settings = DbSettings::default();
    settings.poll_period = std::time::Duration::from_millis(20);
    let db = DbHub::<Sqlite>::open(path, settings).await?;
    let (_hub, todos) = Todos::start(db.clone()).await?;
    let mut stdin = tokio::io::stdin();
    let mut closed = Box::pin(async move {
        let mut buffer = [0_u8; 64];
        while stdin.read(&mut buffer).await.unwrap_or(0) > 0 {}
    });
    let mut stdout = std::io::stdout();
    let (list, mut computed) = capture(todos.list("alice".to_owned())).await?;
    writeln!(stdout, "ready {:?}", list?)?;
    stdout.flush()?;
    loop {
        tokio::select! {
            () = &mut closed => break,
            () = computed.when_invalidated() => {}
        }
        let (list, next) = capture(todos.list("alice".to_owned())).await?;
        computed = next;
        writeln!(stdout, "invalidated {:?}", list?)?;
        stdout.flush()?;
    }
    Ok(())
}

/// `todos check <db>`: a second host in its own process, answering `check <index>` lines on its
/// standard input: once its log reader has read up to that index, it prints what its *cached*
/// compute methods return (`list(alice)`, `open_count(alice)` and every listed todo), so that
/// another process can compare them with fresh reads.
async fn check(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;

    let mut settings = DbSettings::default();
    settings.poll_period = std::time::Duration::from_millis(20);
    let db = DbHub::<Sqlite>::open(path, settings).await?;
    let (hub, todos) = Todos::start(db.clone()).await?;
    let reader = db.log_reader(&hub).ok_or("the hub runs no log reader")?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = std::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let Some(index) = line
            .strip_prefix("check ")
            .and_then(|index| index.parse::<i64>().ok())
        else {
            continue;
        };
        reader.wait_for(index).await;
        writeln!(stdout, "{}", snapshot(&todos).await?)?;
        stdout.flush()?;
    }
    Ok(())
}

/// What a host's compute methods say about alice's todos, as one line.
async fn snapshot(todos: &Todos) -> Result<String, Box<dyn std::error::Error>> {
    let alice = || "alice".to_owned();
    let ids = todos.list(alice()).await?;
    let mut items = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(todo) = todos.get(*id).await? {
            items.push(format!("{}:{}:{}", todo.id, todo.title, todo.done));
        }
    }
    Ok(format!(
        "open={} todos=[{}]",
        todos.open_count(alice()).await?,
        items.join(",")
    ))
}
