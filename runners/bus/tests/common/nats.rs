//! A real nats-server started by a test: a free port, JetStream in a
//! temporary directory, optionally a user and password; stop and restart it
//! like an operator would. Shared by the bus crate's tests and, by path, by
//! the end-to-end tests in the repository's tests/.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A running nats-server (killed on drop).
pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server that only admits `user`/`password` (from a config file).
    pub fn start_with_user(user: &str, password: &str) -> Self {
        Self::start_with(Some(format!(
            "authorization {{\n  user: {user}\n  password: {password}\n}}\n"
        )))
    }

    fn start_with(config: Option<String>) -> Self {
        let store = tempfile::tempdir().expect("tempdir");
        let config = config.map(|c| {
            let p = store.path().join("nats.conf");
            std::fs::write(&p, c).unwrap();
            p
        });
        let mut s = NatsServer {
            port: 0,
            store,
            config,
            child: None,
        };
        for _ in 0..20 {
            s.port = free_port();
            if s.launch() {
                return s;
            }
        }
        panic!("nats-server found no free port in 20 tries");
    }

    /// (Re)starts the server on its port; panics if it cannot listen there.
    pub fn spawn(&mut self) {
        assert!(
            self.launch(),
            "nats-server could not listen on port {}: another process holds it",
            self.port
        );
    }

    /// Starts nats-server on `self.port` and waits until it answers. False
    /// when the port belongs to someone else (a parallel test's server picked
    /// the same free port): a plain TCP probe would succeed against that
    /// server, so the probe checks the server name in its INFO line.
    fn launch(&mut self) -> bool {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "foundry-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new("nats-server");
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-n",
            &name,
            "-js",
            "-sd",
        ])
        .arg(self.store.path().join("js"));
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (tools/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(info) = info_line(self.port) {
                if info.contains(&format!("\"server_name\":\"{name}\"")) {
                    self.child = Some(child);
                    return true;
                }
            }
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop (SIGTERM), as an operator's restart would do.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The INFO line a NATS server sends first on a new connection, if one answers.
fn info_line(port: u16) -> Option<String> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
