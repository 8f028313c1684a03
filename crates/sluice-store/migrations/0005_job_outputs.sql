-- Sluice store, schema version 5: job outputs (see the crate documentation, "Job outputs").

-- Where the job's results are written besides the store: its OutputSpec as JSON ({"uri", "format"}).
-- NULL: no output.
ALTER TABLE jobs ADD COLUMN output TEXT;
-- The export claim: the node writing the output, and until when (unix ms). NULL node: not taken
-- yet. A claim in the past is expired (or released): any node may claim it and go on writing.
ALTER TABLE jobs ADD COLUMN export_node TEXT;
ALTER TABLE jobs ADD COLUMN export_until INTEGER;
-- The writer's last checkpoint (opaque to the store: committed parts and the last done_seq in
-- them), and the results those parts hold.
ALTER TABLE jobs ADD COLUMN export_checkpoint TEXT;
ALTER TABLE jobs ADD COLUMN export_rows INTEGER;
-- NULL while the output is being written; then 'written' or 'failed' (with export_error).
ALTER TABLE jobs ADD COLUMN export_state TEXT CHECK (export_state IN ('written', 'failed'));
ALTER TABLE jobs ADD COLUMN export_error TEXT;

CREATE INDEX jobs_exports ON jobs (pk) WHERE output IS NOT NULL AND export_state IS NULL;
