-- App roles an application defines (JSON array of {id, value, displayName, description,
-- allowedMemberTypes, isEnabled}) and their assignments to principals; they become the
-- `roles` claim of tokens for that application.
ALTER TABLE applications ADD COLUMN app_roles TEXT NOT NULL DEFAULT '[]';
CREATE TABLE app_role_assignments (
    id TEXT PRIMARY KEY,
    principal_id TEXT NOT NULL,
    resource_app_id TEXT NOT NULL,
    app_role_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX app_role_assignments_principal ON app_role_assignments (principal_id, resource_app_id);
