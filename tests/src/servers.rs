//! Servers of a test's own, so that crashing and restarting them disturbs no other test: a
//! PostgreSQL cluster (`initdb` + `pg_ctl` on another port, in a temporary directory) and a
//! Redis server (`redis-server` on another port); and fresh databases on the shared PostgreSQL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use diesel_async::{AsyncConnection, SimpleAsyncConnection};

/// The shared PostgreSQL server (`OFX_TEST_POSTGRES`, by default 127.0.0.1:5432).
pub fn shared_postgres() -> String {
    std::env::var("OFX_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Creates a fresh database on the server at `server` (a URL without a database) and returns
/// its URL. Panics, saying how to start the server, if it cannot be reached.
pub async fn fresh_database(server: &str) -> String {
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot reach PostgreSQL at {server} ({error}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                 or set OFX_TEST_POSTGRES to another server"
            )
        });
    let name = format!("ofx_faults_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|error| panic!("CREATE DATABASE {name}: {error}"));
    format!("{server}/{name}")
}

/// Drops a database made by [`fresh_database`] (best effort: it may still be in use).
pub async fn drop_database(url: &str) {
    let Some((server, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut admin) =
        diesel_async::AsyncPgConnection::establish(&format!("{server}/postgres")).await
    {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// A private PostgreSQL server; stopped and removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivatePostgres {
    /// Creates and starts a server on a free port.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().join("bin"))
                    .find(|bin| bin.join("initdb").exists())
            })
            .expect(
                "PostgreSQL's server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: \
                 install the postgresql package",
            );
        let dir = std::env::temp_dir().join(format!("ofx-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let server = Self {
            dir,
            bin,
            port: free_port(),
        };
        run(
            &server.dir,
            &["chown", "-R", "postgres", &server.dir.to_string_lossy()],
        );
        let data = server.data();
        server.as_postgres(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync"],
        );
        server.ctl_start();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// Its URL, without a database.
    pub fn server_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.to_string_lossy()
        );
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server in `mode` (`fast`, or `immediate`: a crash, recovered at the next
    /// start).
    pub fn ctl_stop(&self, mode: &str) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) {
        let tool = self.bin.join(tool).to_string_lossy().into_owned();
        let mut command = vec!["runuser", "-u", "postgres", "--", tool.as_str()];
        command.extend_from_slice(args);
        run(&self.dir, &command);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let tool = self.bin.join("pg_ctl").to_string_lossy().into_owned();
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &tool,
                "-D",
                &self.data(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(dir: &PathBuf, command: &[&str]) {
    let output = Command::new(command[0])
        .args(&command[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private Redis server (keeps nothing on disk); killed when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PrivateRedis {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
        };
        redis.restart();
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with `SIGKILL`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (on the same port) and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH: install the redis-server package");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "the private redis-server did not listen on port {}",
            self.port
        );
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
