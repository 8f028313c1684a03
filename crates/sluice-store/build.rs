//! Rebuilds the crate when a migration is added or edited, so that `sqlx::migrate!` embeds the current set
//! (SQLite's and PostgreSQL's).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=migrations_postgres");
}
