//! Test support (features `test-util` and `postgres`): a PostgreSQL database of its own for each
//! test, on whatever server this machine offers, so that PostgreSQL tests never skip.
//!
//! The server, in this order:
//! 1. `SLUICE_TEST_POSTGRES` when set to a URL (`postgres://USER@HOST:PORT/DB`): that server (its
//!    user must be allowed to create databases);
//! 2. PostgreSQL on `127.0.0.1:5432` (user `postgres`, trust or password-less auth) when it answers;
//! 3. otherwise a throwaway server this module starts with the PostgreSQL binaries it finds
//!    (`initdb` and `pg_ctl` on `PATH` or in `/usr/lib/postgresql/*/bin`), in a folder under the
//!    system's temporary directory, on port 54329. Test binaries share it; `scripts/test.sh` stops it
//!    at the end. `SLUICE_TEST_POSTGRES=throwaway` forces this case. Started as root, it runs as
//!    the `postgres` user (PostgreSQL refuses to run as root).
//!
//! When none of these works, [`TestDatabase::create`] fails with what to install: a PostgreSQL test
//! fails, it is never skipped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sqlx::{Connection as _, Executor as _, PgConnection};

use crate::StoreError;

/// The port of the throwaway server.
const THROWAWAY_PORT: u16 = 54329;

/// A database created for one test on the test server, dropped (with every connection to it) when
/// this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    url: String,
    name: String,
}

impl TestDatabase {
    /// Creates a new, empty database with a unique name.
    pub async fn create() -> Result<TestDatabase, StoreError> {
        let admin_url = server_url()?;
        let name = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin_url).await?;
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await?;
        let _ = conn.close().await;
        let url = with_database(&admin_url, &name);
        Ok(TestDatabase { admin_url, url, name })
    }

    /// The database's URL, for [`PgStore::connect`](crate::PgStore::connect) or `--store`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of the server's maintenance database (`postgres`), for statements about the whole
    /// server (`pg_terminate_backend`, ...).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside a runtime: do the async work on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.map_err(std::io::Error::other)?;
                conn.execute(sql.as_str()).await.map_err(std::io::Error::other)?;
                let _ = conn.close().await;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// The URL of the test server's `postgres` database, found or started once per process.
fn server_url() -> Result<String, StoreError> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    URL.get_or_init(find_or_start)
        .clone()
        .map_err(|cause| StoreError::Unreachable {
            store: "the test PostgreSQL server".into(),
            cause,
        })
}

fn find_or_start() -> Result<String, String> {
    let forced = std::env::var("SLUICE_TEST_POSTGRES").ok().filter(|v| !v.is_empty());
    match forced.as_deref() {
        Some("throwaway") => return start_throwaway(),
        Some(url) => return Ok(url.to_owned()),
        None => {}
    }
    if answers(5432) {
        return Ok("postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    }
    start_throwaway()
}

fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Starts (or finds running) the throwaway server; returns its URL.
fn start_throwaway() -> Result<String, String> {
    let url = format!("postgres://postgres@127.0.0.1:{THROWAWAY_PORT}/postgres");
    let dir = std::env::temp_dir().join(format!("sluice-test-postgres-{THROWAWAY_PORT}"));
    if answers(THROWAWAY_PORT) {
        return Ok(url);
    }
    let bin = postgres_bin().ok_or_else(|| {
        "no PostgreSQL answers on 127.0.0.1:5432 and no initdb/pg_ctl was found: install PostgreSQL \
         (Debian: apt-get install postgresql), or set SLUICE_TEST_POSTGRES=postgres://USER@HOST:PORT/DB"
            .to_owned()
    })?;
    let as_root = is_root();
    let data = dir.join("data");
    if !data.join("PG_VERSION").exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if as_root {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir), "chown")?;
        }
        run(
            pg_command(&bin, "initdb", as_root).arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ]),
            "initdb",
        )?;
    }
    let options = format!(
        "-p {THROWAWAY_PORT} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        dir.display()
    );
    run(
        pg_command(&bin, "pg_ctl", as_root)
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.join("server.log"))
            .args(["-w", "start"]),
        "pg_ctl start",
    )?;
    Ok(url)
}

/// Where `initdb` and `pg_ctl` are.
fn postgres_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL program, run as the `postgres` user when this process is root.
fn pg_command(bin: &Path, program: &str, as_root: bool) -> Command {
    if as_root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
        cmd
    } else {
        Command::new(bin.join(program))
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_is_replaced() {
        assert_eq!(with_database("postgres://u@h:1/postgres", "t1"), "postgres://u@h:1/t1");
        assert_eq!(
            with_database("postgres://u@h/x?sslmode=disable", "t"),
            "postgres://u@h/t?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t"), "postgres://u@h/t");
    }
}
