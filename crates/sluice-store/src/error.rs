//! The one error type of the store, shared by every backend so that callers (the server) can map
//! each case to a response without knowing which database is behind the `Store` trait.

/// Everything a [`Store`](crate::Store) operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No job has this id.
    #[error("job not found: {0}")]
    NotFound(String),
    /// An input key occurs twice in the job (within the same call or against an earlier one);
    /// nothing of the call that carried it was added.
    #[error("duplicate input key: {0}")]
    DuplicateKey(String),
    /// The operation does not fit the job's state (e.g. adding inputs to a closed or finished job).
    #[error("conflict: {0}")]
    Conflict(String),
    /// An argument is malformed (a bad cursor, a number out of range, a completion that is not
    /// `done`/`failed`, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A stored value could not be decoded: the database holds something this code never writes.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// Adding the inputs would take the job past the most inputs a job may hold; nothing of the
    /// call was added.
    #[error("a job holds at most {limit} inputs")]
    TooManyInputs {
        /// The most inputs a job may hold.
        limit: u64,
    },
    /// The data directory could not be created.
    #[error("cannot prepare data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database server could not be reached (refused, unknown host, authentication failed,
    /// timed out). `store` names where it was looked for, without a password.
    #[error("cannot connect to the job store at {store}: {cause}")]
    Unreachable {
        /// The host and port (or URL without password) of the store.
        store: String,
        /// Why, as the driver reports it.
        cause: String,
    },
    /// The embedded schema migrations could not be applied.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// For a failure of the database itself (not of the caller's request), its class: `disk_full`,
    /// `io_error`, `read_only`, `busy`, `corrupt`, `cannot_open`, `pool_timeout` or `database`.
    /// `None` for the errors that describe the request (not found, duplicate key, conflict,
    /// invalid argument, too many inputs).
    pub fn failure_class(&self) -> Option<&'static str> {
        match self {
            StoreError::NotFound(_)
            | StoreError::DuplicateKey(_)
            | StoreError::Conflict(_)
            | StoreError::Invalid(_)
            | StoreError::TooManyInputs { .. } => None,
            StoreError::Corrupt(_) => Some("corrupt"),
            StoreError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => Some("disk_full"),
            StoreError::Io(_) => Some("io_error"),
            StoreError::Migrate(_) => Some("database"),
            StoreError::Unreachable { .. } => Some("unreachable"),
            StoreError::Database(e) => Some(sqlx_class(e)),
        }
    }
}

/// The class of a database error: from PostgreSQL's SQLSTATE, or SQLite's primary result code;
/// a broken network connection is `unreachable`.
fn sqlx_class(e: &sqlx::Error) -> &'static str {
    match e {
        #[cfg(feature = "postgres")]
        sqlx::Error::Database(db) if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() => {
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                "53100" => "disk_full",
                "25006" => "read_only",
                "40001" | "40P01" | "55P03" => "busy",
                c if c.starts_with("08") || c.starts_with("57P") => "unreachable",
                c if c.starts_with("58") => "io_error",
                c if c.starts_with("XX") => "corrupt",
                _ => "database",
            }
        }
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(1);
            match code & 0xff {
                13 => "disk_full",
                10 => "io_error",
                8 => "read_only",
                5 | 6 => "busy",
                11 | 26 => "corrupt",
                14 => "cannot_open",
                _ => "database",
            }
        }
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => "disk_full",
        sqlx::Error::Io(e) if is_network(e.kind()) => "unreachable",
        sqlx::Error::Io(_) => "io_error",
        sqlx::Error::PoolTimedOut => "pool_timeout",
        _ => "database",
    }
}

/// Whether an I/O error is a network connection's (only a client-server database has those).
fn is_network(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        kind,
        K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::TimedOut
            | K::UnexpectedEof
    )
}

#[cfg(feature = "postgres")]
/// Whether the failure is a PostgreSQL serialization failure or deadlock, which the same
/// transaction run again resolves.
pub(crate) fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01"))
        }
        _ => false,
    }
}
