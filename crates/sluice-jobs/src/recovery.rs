//! Recovery at start: settling what a crash or restart interrupted.

use sluice_store::Store;

/// Settles jobs whose creation a crash interrupted. An inline job is created
/// with all its inputs and closed in one transaction, so none is left unclosed
/// (a database written by an older version may hold one: with inputs, they came
/// in one transaction and it is closed; without, its creation was cut short and
/// it is canceled, never reported complete). A `source` job whose file was only
/// partly read is canceled rather than run on part of its inputs (resubmit it).
///
/// Run it once at start, before the scheduler starts feeding.
pub async fn recover_unclosed(store: &dyn Store) {
    let Ok(active) = store.active_jobs().await else { return };
    for job in active.into_iter().filter(|j| !j.open && !j.closed) {
        let outcome = if job.source.is_some() {
            tracing::warn!(job = %job.id, "reading the job's source was interrupted by a restart; canceling it");
            store.cancel_job(&job.id).await
        } else if job.total == 0 {
            tracing::warn!(job = %job.id, "the job's creation was interrupted before its inputs were stored; canceling it");
            store.cancel_job(&job.id).await
        } else {
            store.close_job(&job.id).await
        };
        if let Err(e) = outcome {
            tracing::error!(job = %job.id, error = %e, "cannot settle an interrupted job");
        }
    }
}
