-- One schema for SQLite and PostgreSQL: only TEXT and BIGINT columns (the sqlx Any driver's
-- portable subset). Times are unix seconds; booleans are 0/1; JSON is TEXT.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    is_home BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE management_groups (
    name_lc TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    parent_lc TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    management_group_lc TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE resource_groups (
    subscription_id TEXT NOT NULL,
    name_lc TEXT NOT NULL,
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, name_lc)
);
CREATE TABLE resources (
    id_lc TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    type_lc TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    resource_group_lc TEXT NOT NULL,
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    tags TEXT NOT NULL,
    properties TEXT NOT NULL,
    system_principal_id TEXT,
    user_identities TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX resources_rg ON resources (subscription_id, resource_group_lc);
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    upn_lc TEXT NOT NULL UNIQUE,
    upn TEXT NOT NULL,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE groups_ (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE group_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
CREATE TABLE applications (
    app_id TEXT PRIMARY KEY,
    object_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    identifier_uris TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    public_client BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
-- Service principals of applications and of managed identities (kind 'Application' or
-- 'ManagedIdentity'). For a managed identity, app_id is its client id and mi_resource_id the
-- ARM id that goes into xms_mirid.
CREATE TABLE service_principals (
    id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    mi_resource_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE client_secrets (
    key_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    hint TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX client_secrets_app ON client_secrets (app_id);
CREATE TABLE client_certificates (
    key_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    thumbprint_sha1 TEXT NOT NULL,
    cert_der TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX client_certificates_app ON client_certificates (app_id);
CREATE TABLE role_definitions (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE role_assignments (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    scope_lc TEXT NOT NULL,
    role_definition_id TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    description TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX role_assignments_scope ON role_assignments (scope_lc);
CREATE INDEX role_assignments_principal ON role_assignments (principal_id);
CREATE TABLE deny_assignments (
    id TEXT PRIMARY KEY,
    scope_lc TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    cert_der TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activated_at BIGINT,
    retired_at BIGINT,
    remove_after BIGINT
);
CREATE TABLE auth_codes (
    code_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used BIGINT NOT NULL
);
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE TABLE consents (
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    resource TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id, resource)
);
-- A binding hands a process (`cloister run`) the right to get tokens for a set of managed
-- identities, like a VM's IMDS. Only the keyed hash of its secret is stored.
CREATE TABLE identity_bindings (
    secret_hash TEXT PRIMARY KEY,
    resource_id TEXT NOT NULL,
    principal_ids TEXT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
