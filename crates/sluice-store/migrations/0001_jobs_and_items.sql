-- Sluice store, schema version 1: bulk jobs, their tags and their items.
-- See the crate documentation (src/lib.rs) for the invariants these tables keep.

-- One row per job. `pk` is the internal key (compact, monotonic: the order of creation);
-- `id` is the public random id. Counters are kept in step with `items` by the same
-- transactions that change item states.
CREATE TABLE jobs (
    pk             INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    model          TEXT    NOT NULL,
    version        TEXT,
    status         TEXT    NOT NULL CHECK (status IN ('SUBMITTED', 'IN_PROGRESS', 'COMPLETED', 'CANCELED', 'TIMEDOUT', 'FAILED')),
    open           INTEGER NOT NULL CHECK (open IN (0, 1)),
    closed         INTEGER NOT NULL DEFAULT 0 CHECK (closed IN (0, 1)),
    priority       INTEGER NOT NULL DEFAULT 0,
    tags           TEXT    NOT NULL DEFAULT '[]',
    timeout_ms     INTEGER,
    source         TEXT,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    total          INTEGER NOT NULL DEFAULT 0,
    completed      INTEGER NOT NULL DEFAULT 0,
    failed         INTEGER NOT NULL DEFAULT 0,
    canceled       INTEGER NOT NULL DEFAULT 0,
    timedout       INTEGER NOT NULL DEFAULT 0,
    queue_ms_total REAL NOT NULL DEFAULT 0,
    model_ms_total REAL NOT NULL DEFAULT 0
);

-- Active jobs (the feeder, restart, expiry) are found through this index.
CREATE INDEX jobs_status ON jobs (status, pk);
CREATE INDEX jobs_model ON jobs (model, pk);

-- Tags, one row per (tag, job), for `list_jobs` filtered by tag.
CREATE TABLE job_tags (
    job_pk INTEGER NOT NULL REFERENCES jobs (pk),
    tag    TEXT    NOT NULL,
    PRIMARY KEY (tag, job_pk)
) WITHOUT ROWID;

-- One row per input. `seq` is the 0-based insertion order within the job; `done_seq` is the
-- 0-based order in which the item left the `pending` state (NULL while pending).
CREATE TABLE items (
    job_pk        INTEGER NOT NULL REFERENCES jobs (pk),
    seq           INTEGER NOT NULL,
    key           TEXT    NOT NULL,
    input_kind    TEXT    NOT NULL CHECK (input_kind IN ('text', 'bytes', 'json', 'invalid')),
    input         BLOB    NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed', 'canceled', 'timedout')),
    output        TEXT,
    error_code    TEXT,
    error_message TEXT,
    queue_ms      REAL,
    model_ms      REAL,
    done_seq      INTEGER
);

-- A key is unique within its job: this index is what rejects duplicates.
CREATE UNIQUE INDEX items_key ON items (job_pk, key);
-- Pending items in seq order: the feeder's stream and the target of `record`'s guarded update.
-- Partial, so it shrinks as the job progresses and never makes the feeder skip over done rows.
CREATE INDEX items_pending ON items (job_pk, seq) WHERE state = 'pending';
-- Finished items in completion order: the results cursor.
CREATE UNIQUE INDEX items_done ON items (job_pk, done_seq) WHERE done_seq IS NOT NULL;
