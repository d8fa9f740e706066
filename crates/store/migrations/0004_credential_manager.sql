-- Credential manager: providers, connections and access policies under a service instance
-- (one table, `kind` tells which), per-connection token runtime state, and in-flight logins.
CREATE TABLE cred_items (
    id_lc TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    parent_lc TEXT NOT NULL,
    instance_lc TEXT NOT NULL,
    name TEXT NOT NULL,
    properties TEXT NOT NULL,
    etag TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX cred_items_parent ON cred_items (parent_lc, kind);
CREATE INDEX cred_items_instance ON cred_items (instance_lc);

CREATE TABLE cred_tokens (
    connection_lc TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    lease_owner TEXT NOT NULL,
    lease_until BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE cred_logins (
    state_hash TEXT PRIMARY KEY,
    connection_lc TEXT NOT NULL,
    sealed TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
