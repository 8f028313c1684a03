-- Sluice store on PostgreSQL, schema version 1: the same tables and invariants as the SQLite
-- schema (crates/sluice-store/migrations/, the crate documentation), for several nodes at once.
-- Times are unix milliseconds. Leases and heartbeats use the database's clock.

CREATE TABLE jobs (
    pk             BIGSERIAL PRIMARY KEY,
    id             TEXT     NOT NULL UNIQUE,
    model          TEXT     NOT NULL,
    version        TEXT,
    status         TEXT     NOT NULL CHECK (status IN ('SUBMITTED', 'IN_PROGRESS', 'COMPLETED', 'CANCELED', 'TIMEDOUT', 'FAILED')),
    open           BOOLEAN  NOT NULL,
    closed         BOOLEAN  NOT NULL DEFAULT FALSE,
    priority       INTEGER  NOT NULL DEFAULT 0,
    tags           TEXT     NOT NULL DEFAULT '[]',
    timeout_ms     BIGINT,
    source         TEXT,
    created_at     BIGINT   NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    total          BIGINT   NOT NULL DEFAULT 0,
    completed      BIGINT   NOT NULL DEFAULT 0,
    failed         BIGINT   NOT NULL DEFAULT 0,
    canceled       BIGINT   NOT NULL DEFAULT 0,
    timedout       BIGINT   NOT NULL DEFAULT 0,
    queue_ms_total DOUBLE PRECISION NOT NULL DEFAULT 0,
    model_ms_total DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status ON jobs (status, pk);
CREATE INDEX jobs_model_active ON jobs (model, priority DESC, pk) WHERE status IN ('SUBMITTED', 'IN_PROGRESS');

CREATE TABLE job_tags (
    tag    TEXT   NOT NULL,
    job_pk BIGINT NOT NULL REFERENCES jobs (pk),
    PRIMARY KEY (tag, job_pk)
);

CREATE TABLE items (
    job_pk        BIGINT NOT NULL REFERENCES jobs (pk),
    seq           BIGINT NOT NULL,
    key           TEXT   NOT NULL,
    input_kind    TEXT   NOT NULL CHECK (input_kind IN ('text', 'bytes', 'json', 'invalid')),
    input         BYTEA  NOT NULL,
    state         TEXT   NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed', 'canceled', 'timedout')),
    -- The processor's JSON text, as it produced it.
    output        TEXT,
    error_code    TEXT,
    error_message TEXT,
    queue_ms      DOUBLE PRECISION,
    model_ms      DOUBLE PRECISION,
    done_seq      BIGINT,
    lease_node    TEXT,
    lease_until   BIGINT,
    PRIMARY KEY (job_pk, seq)
);
CREATE UNIQUE INDEX items_key ON items (job_pk, key);
CREATE INDEX items_pending ON items (job_pk, seq) WHERE state = 'pending';
CREATE UNIQUE INDEX items_done ON items (job_pk, done_seq) WHERE done_seq IS NOT NULL;
CREATE INDEX items_leased ON items (lease_node) WHERE state = 'pending' AND lease_node IS NOT NULL;

CREATE TABLE nodes (
    id           TEXT   PRIMARY KEY,
    role         TEXT   NOT NULL,
    models       TEXT   NOT NULL DEFAULT '[]',
    address      TEXT,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- The one row `probe_write` rewrites.
CREATE TABLE write_probe (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    at BIGINT  NOT NULL
);
