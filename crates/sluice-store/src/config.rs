//! Where the store lives, parsed once from a URL (`sluice serve --store`, env `SLUICE_STORE`) and
//! opened as an `Arc<dyn Store>`.
//!
//! - no URL, or `sqlite://DIR` / `sqlite:DIR`: SQLite in `DIR/sluice.db` (no URL: the data dir), the
//!   single-node default;
//! - `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?options]` (or `postgresql://`): PostgreSQL,
//!   shared by every node of an installation (cargo feature `postgres`, on by default).
//!
//! A URL may carry a password: [`StoreConfig`]'s `Display` and every error built here show it as
//! `***`, so that neither logs nor messages leak it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{SqliteStore, Store, StoreError};

/// A validated store location.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite in this folder (`sluice.db`).
    Sqlite {
        /// The data folder.
        data_dir: PathBuf,
    },
    /// PostgreSQL at this URL (with its password, if any: never print it, use `Display`).
    Postgres {
        /// The connection URL.
        url: String,
    },
}

impl StoreConfig {
    /// The store for `url`, or SQLite in `data_dir` when `url` is `None` or empty.
    ///
    /// Errors: [`StoreError::Invalid`] for a URL of another scheme, a PostgreSQL URL without a
    /// host, or `postgres://` when this build has no PostgreSQL support.
    pub fn from_url(url: Option<&str>, data_dir: &Path) -> Result<StoreConfig, StoreError> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(StoreConfig::Sqlite {
                data_dir: data_dir.to_path_buf(),
            });
        };
        if let Some(dir) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if dir.is_empty() {
                return Err(StoreError::Invalid("a sqlite:// store URL needs a folder".into()));
            }
            return Ok(StoreConfig::Sqlite {
                data_dir: PathBuf::from(dir),
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if host_of(url).is_empty() {
                return Err(StoreError::Invalid(format!(
                    "the store URL {} names no host",
                    redact_url(url)
                )));
            }
            if !cfg!(feature = "postgres") {
                return Err(StoreError::Invalid(
                    "this build of Sluice has no PostgreSQL support (cargo feature `postgres`)".into(),
                ));
            }
            return Ok(StoreConfig::Postgres { url: url.to_owned() });
        }
        let scheme = url.split_once("://").map_or(url, |(s, _)| s);
        Err(StoreError::Invalid(format!(
            "unsupported store URL scheme {scheme:?}: use postgres://USER@HOST:PORT/DB or sqlite://DIR"
        )))
    }

    /// Whether several nodes can share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreConfig::Postgres { .. })
    }

    /// Opens the store, applying its migrations.
    ///
    /// Errors name where the store is and why it cannot be opened (for PostgreSQL: the host and
    /// the cause, e.g. connection refused), never a password.
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            StoreConfig::Sqlite { data_dir } => Ok(Arc::new(SqliteStore::open(data_dir).await?)),
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres { url } => Ok(Arc::new(crate::PgStore::connect(url).await?)),
            #[cfg(not(feature = "postgres"))]
            StoreConfig::Postgres { .. } => Err(StoreError::Invalid(
                "this build of Sluice has no PostgreSQL support (cargo feature `postgres`)".into(),
            )),
        }
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sqlite { data_dir } => write!(f, "sqlite://{}", data_dir.display()),
            StoreConfig::Postgres { url } => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreConfig({self})")
    }
}

/// The `host[:port]` part of a URL (after the user info, before the path).
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |(_, host)| host)
}

/// `url` with any password (in the user info or a `password=` query option) shown as `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    if scheme.is_empty() {
        format!("{authority}{tail}")
    } else {
        format!("{scheme}://{authority}{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_url_is_sqlite_in_the_data_dir() {
        let cfg = StoreConfig::from_url(None, Path::new("/var/lib/sluice")).expect("parse");
        assert_eq!(
            cfg,
            StoreConfig::Sqlite {
                data_dir: "/var/lib/sluice".into()
            }
        );
        let cfg = StoreConfig::from_url(Some("sqlite:///tmp/x"), Path::new("ignored")).expect("parse");
        assert_eq!(cfg.to_string(), "sqlite:///tmp/x");
        assert!(!cfg.is_shared());
    }

    #[test]
    fn passwords_never_show() {
        let url = "postgres://sluice:s3cr3t@db.example:5433/jobs?sslmode=require&password=other";
        assert_eq!(
            redact_url(url),
            "postgres://sluice:***@db.example:5433/jobs?sslmode=require&password=***"
        );
        assert_eq!(host_of(url), "db.example:5433");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        if let Ok(cfg) = StoreConfig::from_url(Some(url), Path::new(".")) {
            assert!(!format!("{cfg} {cfg:?}").contains("s3cr3t"));
        }
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        let err = StoreConfig::from_url(Some("mysql://h/db"), Path::new(".")).expect_err("mysql");
        assert!(err.to_string().contains("\"mysql\""), "{err}");
        let err = StoreConfig::from_url(Some("postgres:///db"), Path::new(".")).expect_err("no host");
        assert!(err.to_string().contains("no host"), "{err}");
        assert!(StoreConfig::from_url(Some("sqlite://"), Path::new(".")).is_err());
    }
}
