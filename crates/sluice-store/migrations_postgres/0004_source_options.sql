-- Sluice store on PostgreSQL, schema version 4: how a source job's source is read, as in the
-- SQLite schema (migrations/0006_source_options.sql).

-- The source reader's options as JSON, opaque to the store; NULL: the defaults.
ALTER TABLE jobs ADD COLUMN source_options TEXT;
