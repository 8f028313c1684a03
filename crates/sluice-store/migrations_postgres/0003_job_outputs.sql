-- Sluice store on PostgreSQL, schema version 3: job outputs, as in the SQLite schema
-- (migrations/0005_job_outputs.sql; the crate documentation, "Job outputs").

-- The job's OutputSpec as JSON ({"uri", "format"}); NULL: no output.
ALTER TABLE jobs ADD COLUMN output TEXT;
-- The export claim: the node writing the output, and until when (unix ms, the database's clock).
ALTER TABLE jobs ADD COLUMN export_node TEXT;
ALTER TABLE jobs ADD COLUMN export_until BIGINT;
-- The writer's last checkpoint (opaque to the store) and the results its parts hold.
ALTER TABLE jobs ADD COLUMN export_checkpoint TEXT;
ALTER TABLE jobs ADD COLUMN export_rows BIGINT;
-- NULL while the output is being written; then 'written' or 'failed' (with export_error).
ALTER TABLE jobs ADD COLUMN export_state TEXT CHECK (export_state IN ('written', 'failed'));
ALTER TABLE jobs ADD COLUMN export_error TEXT;

CREATE INDEX jobs_exports ON jobs (pk) WHERE output IS NOT NULL AND export_state IS NULL;
