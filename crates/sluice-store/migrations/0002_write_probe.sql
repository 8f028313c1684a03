-- Sluice store, schema version 2: one row that `probe_write` rewrites to tell whether the store
-- can write again after a failed write (a full disk, an I/O error).
CREATE TABLE write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
