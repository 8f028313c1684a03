//! Recovery at start: settling what a crash or restart interrupted.
//!
//! Two kinds of job can be left unclosed by a crash. An inline job is created
//! with all its inputs and closed in one transaction, so none is, unless an
//! older version wrote it: [`recover_unclosed`] settles those. A `source` job
//! whose source was being read is **resumed**, not settled: its ingest claim
//! lets this node (at start, [`Jobs::resume_ingests`]`(true)`) or, once the
//! claim expires, any node that accepts jobs (the keeper,
//! [`Jobs::spawn_ingest_keeper`]) read the rest of its source after the
//! inputs already stored (see [`crate::source_jobs`]).
//!
//! [`Jobs::resume_ingests`]: crate::Jobs::resume_ingests
//! [`Jobs::spawn_ingest_keeper`]: crate::Jobs::spawn_ingest_keeper

use sluice_store::Store;

/// Settles the inline jobs whose creation a crash interrupted (only a
/// database written by an older version holds one): with inputs, they came in
/// one transaction and the job is closed; without, its creation was cut short
/// and it is canceled, never reported complete. `source` jobs are left to
/// [`Jobs::resume_ingests`](crate::Jobs::resume_ingests), which goes on
/// reading them where their inputs stop; open jobs wait for their uploads.
///
/// Run it once at start, before the scheduler starts feeding, on a store no
/// other node shares (on a shared one, another api node may be creating a job
/// right now).
pub async fn recover_unclosed(store: &dyn Store) {
    let Ok(active) = store.active_jobs().await else { return };
    for job in active
        .into_iter()
        .filter(|j| !j.open && !j.closed && j.source.is_none())
    {
        let outcome = if job.total == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::{InputValue, JobStatus, NewJob, SqliteStore};

    #[tokio::test]
    async fn unclosed_inline_jobs_are_settled_and_source_jobs_left_to_resume() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(dir.path()).await?;
        let new = |source: Option<&str>, open: bool| NewJob {
            model: "m".into(),
            source: source.map(str::to_owned),
            open,
            ..NewJob::default()
        };
        let empty = store.create_job(new(None, false)).await?;
        let filled = store.create_job(new(None, false)).await?;
        store
            .add_inputs(&filled.id, vec![("a".into(), InputValue::Text("x".into()))])
            .await?;
        let open = store.create_job(new(None, true)).await?;
        let source = store
            .create_source_job(new(Some("/data/in.jsonl"), false), "n", 1)
            .await?;
        store
            .add_ingested(&source.id, "n", 0, vec![("1".into(), InputValue::Text("x".into()))], 10)
            .await?;

        recover_unclosed(&store).await;

        let get = |id: String| {
            let store = store.clone();
            async move { store.get_job(&id).await.ok().flatten().ok_or("job vanished") }
        };
        assert_eq!(get(empty.id).await?.status, JobStatus::Canceled);
        let filled = get(filled.id).await?;
        assert!(filled.closed && filled.status == JobStatus::Submitted, "{filled:?}");
        assert!(!get(open.id).await?.closed, "an open job waits for its uploads");
        let source_now = get(source.id.clone()).await?;
        assert!(
            !source_now.closed && source_now.status == JobStatus::Submitted && source_now.total == 1,
            "a source job is resumed, not settled: {source_now:?}"
        );
        // Its claim (expired) lets a node resume it.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(store.ingests_to_resume(None).await?, vec![source.id]);
        Ok(())
    }
}
