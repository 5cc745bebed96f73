//! What the benches share: the PostgreSQL server they create their databases on. Each bench
//! includes this file (`#[path = "support/mod.rs"] mod support;`) and uses part of it.

#![allow(dead_code)]

/// The server of `OFX_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`).
pub(crate) fn postgres_server() -> String {
    std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A connection to the server's `postgres` database, for `CREATE` and `DROP DATABASE`.
pub(crate) async fn admin_client() -> tokio_postgres::Client {
    let server = postgres_server();
    let (client, connection) =
        tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot reach PostgreSQL at {server} ({error}); start it with \
                     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
                )
            });
    tokio::spawn(connection);
    client
}

/// Runs `statement` on the server's `postgres` database.
pub(crate) async fn admin(statement: &str) {
    admin_client()
        .await
        .batch_execute(statement)
        .await
        .unwrap_or_else(|error| panic!("{statement}: {error}"));
}
