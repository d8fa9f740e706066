-- Long-running operations of the management API (the records behind Azure-AsyncOperation and
-- Location). `status` is ARM's provisioning-state vocabulary; Succeeded, Failed and Canceled
-- are terminal and never left. `heartbeat_at` is touched by the node running the work, so an
-- operation whose node died (a restart, a crash) is found stale and failed.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    subscription_id TEXT NOT NULL,
    namespace_lc TEXT NOT NULL,
    location TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    resource_id_lc TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    error_code TEXT,
    error_message TEXT,
    result TEXT,
    caller TEXT NOT NULL,
    start_time BIGINT NOT NULL,
    end_time BIGINT,
    heartbeat_at BIGINT NOT NULL
);
CREATE INDEX operations_resource ON operations (resource_id_lc, status);
CREATE INDEX operations_status ON operations (status, heartbeat_at);
