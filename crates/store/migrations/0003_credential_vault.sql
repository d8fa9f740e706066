-- The credential vault (cloister-credentials' `vault` module).
--
-- cred_keks: the ring of key-encryption keys (KEKs). Each version is a random 256-bit key
-- wrapped by the key provider (the master key, or an outside KMS); `provider` names the
-- provider that wrapped it. The highest version is the primary: new records are wrapped
-- under it. Versions are never updated in place.
CREATE TABLE cred_keks (
    version BIGINT PRIMARY KEY,
    wrapped TEXT NOT NULL,
    provider TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- cred_secrets: one envelope-encrypted secret per (owner, field). `owner_lc` is the lower-case
-- id of what the secret belongs to (a provider or a connection); the instance/provider/
-- connection columns are the record's binding context, which the rotation job needs to
-- re-wrap the record. `kek_version` mirrors the version in the blob's header so the job can
-- find records still under an old KEK; `blob` is the base64 sealed record.
CREATE TABLE cred_secrets (
    owner_lc TEXT NOT NULL,
    field TEXT NOT NULL,
    instance_lc TEXT NOT NULL,
    provider_lc TEXT NOT NULL,
    connection_lc TEXT NOT NULL,
    kek_version BIGINT NOT NULL,
    blob TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (owner_lc, field)
);
-- Leads with kek_version: the rotation job's "rows below version N, in key order" query.
CREATE INDEX cred_secrets_kek ON cred_secrets (kek_version, owner_lc, field);
CREATE INDEX cred_secrets_instance ON cred_secrets (instance_lc);
