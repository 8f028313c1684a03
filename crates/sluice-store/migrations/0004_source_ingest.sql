-- Sluice store, schema version 4: source jobs that survive crashes (see the crate documentation,
-- "Source ingestion").

-- Why the job failed as a whole, if it did (its source could not be read to the end). A job with
-- an error ends FAILED once its stored inputs have run.
ALTER TABLE jobs ADD COLUMN error TEXT;
-- The ingest claim of a job that reads a server-side source: the node reading it, and until when
-- (unix ms). NULL node: not a source job. A claim in the past is expired (or released): any node
-- may claim the job and go on reading where its inputs stop.
ALTER TABLE jobs ADD COLUMN ingest_node TEXT;
ALTER TABLE jobs ADD COLUMN ingest_until INTEGER;

-- Source jobs that an older version left unclosed (a crash while it read them) go on reading too.
UPDATE jobs SET ingest_node = '', ingest_until = 0
 WHERE source IS NOT NULL AND open = 0 AND closed = 0 AND status IN ('SUBMITTED', 'IN_PROGRESS');
