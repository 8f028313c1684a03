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
    /// The data directory could not be created.
    #[error("cannot prepare data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded schema migrations could not be applied.
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
