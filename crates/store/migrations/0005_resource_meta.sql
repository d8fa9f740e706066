-- ARM metadata of resources: the ETag of the current version and systemData's who
-- (created/last modified by, and the kind of principal). Empty for rows written before.
ALTER TABLE resources ADD COLUMN etag TEXT NOT NULL DEFAULT '';
ALTER TABLE resources ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
ALTER TABLE resources ADD COLUMN created_by_type TEXT NOT NULL DEFAULT '';
ALTER TABLE resources ADD COLUMN modified_by TEXT NOT NULL DEFAULT '';
ALTER TABLE resources ADD COLUMN modified_by_type TEXT NOT NULL DEFAULT '';
