-- Sluice store, schema version 3: leases on pending items and the node table, so that several
-- processes can share one store (see the crate documentation, "Leases").

-- The node that claimed a pending item, and until when (unix ms). NULL: claimable. A lease in the
-- past is expired: the item is claimable again.
ALTER TABLE items ADD COLUMN lease_node TEXT;
ALTER TABLE items ADD COLUMN lease_until INTEGER;
-- The leases a node holds, for renewing and releasing them with one statement.
CREATE INDEX items_leased ON items (lease_node) WHERE state = 'pending' AND lease_node IS NOT NULL;

-- One row per live node, rewritten by its heartbeats.
CREATE TABLE nodes (
    id           TEXT    PRIMARY KEY,
    role         TEXT    NOT NULL,
    models       TEXT    NOT NULL DEFAULT '[]',
    address      TEXT,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
