-- Modules of the OpenTofu/Terraform registry: a directory of a GitLab
-- project, published at every semantic-version tag.
CREATE TABLE modules (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    space_id       TEXT NOT NULL REFERENCES spaces (id),
    integration_id TEXT REFERENCES integrations (id) ON DELETE SET NULL,
    project_id     BIGINT NOT NULL,
    repository     TEXT NOT NULL,
    project_root   TEXT NOT NULL,
    provider       TEXT NOT NULL,
    labels         TEXT NOT NULL,
    description    TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX modules_project ON modules (integration_id, project_id);

-- A version is published once, at one commit; a deleted tag yanks it.
CREATE TABLE module_versions (
    module_id    TEXT NOT NULL REFERENCES modules (id) ON DELETE CASCADE,
    version      TEXT NOT NULL,
    commit_sha   TEXT NOT NULL,
    tag          TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('published', 'yanked')),
    published_at BIGINT NOT NULL,
    PRIMARY KEY (module_id, version)
);
