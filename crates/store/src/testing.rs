//! Real Redis and PostgreSQL servers for tests (feature `testing`): Debian's `redis-server` and
//! PostgreSQL (`scripts/setup.sh` installs both), started on loopback on a free port with their
//! data in a directory of their own, stopped on drop. Never the packages' services.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Remote;

/// The password both servers are started with.
pub const PASSWORD: &str = "audit-test-password";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` on 127.0.0.1, with `requirepass` and an append-only file in `dir`, so that
/// a restart keeps what was written.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("redis data directory");
        let mut server = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        server.restart();
        server
    }

    pub fn remote(&self) -> Remote {
        Remote::Redis {
            host: "127.0.0.1".into(),
            port: self.port,
            password: Some(PASSWORD.into()),
        }
    }

    /// Runs one command with `redis-cli` (as a person editing the store by hand would).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "--no-auth-warning",
            ])
            .args(["-a", PASSWORD])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(output.status.success(), "redis-cli {args:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Stops the server (SIGTERM, as a pod's stop does) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--requirepass",
                PASSWORD,
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        wait_for_port(self.port, &mut child, "redis-server");
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL server on 127.0.0.1: a fresh cluster in `dir` (`initdb`), user `agentmesh`
/// with [`PASSWORD`] (scram-sha-256), database `agentmesh`. Run as the `postgres` user when
/// the tests run as root, which PostgreSQL refuses.
pub struct PostgresServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql (scripts/setup.sh installs PostgreSQL)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no PostgreSQL {name}"))
}

/// The uid and gid of the `postgres` account, read from `/etc/passwd`.
fn postgres_account() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

/// `program`, run as the `postgres` account when we are root (exec'd directly, so that the
/// child's pid is the server's).
fn as_postgres_user(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    // SAFETY: getuid(2) cannot fail.
    if unsafe { libc::getuid() } == 0 {
        let (uid, gid) = postgres_account()
            .expect("the postgres account (Debian's postgresql package makes it)");
        command.uid(uid).gid(gid);
    }
    command
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
}

impl PostgresServer {
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("postgres directory");
        let data = dir.join("data");
        let password_file = dir.join("password");
        std::fs::write(&password_file, PASSWORD).expect("password file");
        // The postgres account must own the directory it runs in (as root; otherwise it is ours).
        if let Some((uid, gid)) = postgres_account() {
            let _ = std::os::unix::fs::chown(dir, Some(uid), Some(gid));
            let _ = std::os::unix::fs::chown(&password_file, Some(uid), Some(gid));
        }
        let status = as_postgres_user(&postgres_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "agentmesh", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!("--pwfile={}", password_file.display()))
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed: {status}");
        let mut server = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        server.restart();
        server.psql("CREATE DATABASE agentmesh");
        server
    }

    pub fn remote(&self) -> Remote {
        Remote::Postgres {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "agentmesh".into(),
            database: "agentmesh".into(),
            password: Some(PASSWORD.into()),
        }
    }

    /// Runs one SQL statement with `psql` (as a person editing the store by hand would).
    pub fn psql(&self, sql: &str) -> String {
        let database = if sql.starts_with("CREATE DATABASE") {
            "postgres"
        } else {
            "agentmesh"
        };
        let output = Command::new(postgres_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "agentmesh",
                "-d",
                database,
                "-tAc",
                sql,
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGINT); // PostgreSQL's fast shutdown
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        let mut child = as_postgres_user(&postgres_bin("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .arg("-p")
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        wait_for_port(self.port, &mut child, "postgres");
        self.child = Some(child);
        // An open port is not a server that takes connections: until its start-up is over it
        // answers "the database system is starting up".
        let start = Instant::now();
        loop {
            let ready = Command::new(postgres_bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-t", "1", "-p"])
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .status()
                .expect("pg_isready");
            if ready.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "postgres on port {} never became ready ({ready})",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The operator's (and `agentmesh audit`'s) variables that name `remote`: backend, host,
/// port and password.
pub fn store_env(remote: &Remote) -> Vec<(String, String)> {
    let pairs: Vec<(&str, String)> = match remote {
        Remote::Redis {
            host,
            port,
            password,
        } => vec![
            ("AGENTMESH_STORAGE_BACKEND", "redis".into()),
            ("AGENTMESH_REDIS_HOST", host.clone()),
            ("AGENTMESH_REDIS_PORT", port.to_string()),
            (
                "AGENTMESH_REDIS_PASSWORD",
                password.clone().unwrap_or_default(),
            ),
        ],
        Remote::Postgres {
            host,
            port,
            password,
            ..
        } => vec![
            ("AGENTMESH_STORAGE_BACKEND", "postgres".into()),
            ("AGENTMESH_POSTGRES_HOST", host.clone()),
            ("AGENTMESH_POSTGRES_PORT", port.to_string()),
            (
                "AGENTMESH_POSTGRES_PASSWORD",
                password.clone().unwrap_or_default(),
            ),
        ],
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
