-- Sessions across nodes. `nodes` holds one row per Cloister node serving session pools: its
-- internal address, its free capacity (for placement) and a heartbeat; a node is alive while
-- `expires_at` is in the future. `session_leases` says which node owns the session of an
-- identifier in a pool: a lease is live exactly while its node is alive, so a node renews all
-- its leases with one heartbeat, and a dead node's leases (and its share of
-- `maxConcurrentSessions`) lapse together when its heartbeat does.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    draining BIGINT NOT NULL,
    free_slots BIGINT NOT NULL,
    free_memory BIGINT NOT NULL
);
CREATE TABLE session_leases (
    pool_id_lc TEXT NOT NULL,
    identifier TEXT NOT NULL,
    node_id TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (pool_id_lc, identifier)
);
CREATE INDEX session_leases_node ON session_leases (node_id);
