-- Sluice store on PostgreSQL, schema version 2: source jobs that survive crashes, as in the SQLite
-- schema (migrations/0004_source_ingest.sql; the crate documentation, "Source ingestion").

-- Why the job failed as a whole, if it did (its source could not be read to the end).
ALTER TABLE jobs ADD COLUMN error TEXT;
-- The ingest claim of a source job: the node reading it, and until when (unix ms, the database's
-- clock). NULL node: not a source job. A claim in the past is expired (or released).
ALTER TABLE jobs ADD COLUMN ingest_node TEXT;
ALTER TABLE jobs ADD COLUMN ingest_until BIGINT;

-- Source jobs that an older version left unclosed go on reading too.
UPDATE jobs SET ingest_node = '', ingest_until = 0
 WHERE source IS NOT NULL AND NOT open AND NOT closed AND status IN ('SUBMITTED', 'IN_PROGRESS');
