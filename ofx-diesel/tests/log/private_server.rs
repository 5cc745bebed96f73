//! A PostgreSQL server of the test's own (`initdb` + `pg_ctl` on another port, in a temporary
//! directory), so that restarting it disturbs no other test.

use std::path::PathBuf;
use std::process::Command;

/// A private PostgreSQL server; stopped and removed when dropped.
pub(crate) struct PrivateServer {
    dir: PathBuf,
    bin: PathBuf,
    pub(crate) port: u16,
}

impl PrivateServer {
    /// Creates and starts a server on a free port.
    pub(crate) fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(Result::ok).map(|entry| entry.path().join("bin")).find(|bin| bin.join("initdb").exists()))
            .expect("PostgreSQL's server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: install the postgresql package");
        let dir = std::env::temp_dir().join(format!("ofx-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let port = free_port();
        let server = Self { dir, bin, port };
        server.run(
            &["chown", "-R", "postgres", &server.dir.to_string_lossy()],
            false,
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

    /// The URL of a database on this server.
    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub(crate) fn ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
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

    /// Stops the server (fast: open connections are closed).
    pub(crate) fn ctl_stop(&self) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) {
        let tool = self.bin.join(tool).to_string_lossy().into_owned();
        let mut command = vec!["runuser", "-u", "postgres", "--", tool.as_str()];
        command.extend_from_slice(args);
        self.run(&command, true);
    }

    fn run(&self, command: &[&str], check: bool) {
        let output = Command::new(command[0])
            .args(&command[1..])
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
        assert!(
            !check || output.status.success(),
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivateServer {
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

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}
