-- Stacks: a repository directory, a tracked branch and a workflow. JSON
-- columns hold lists and objects; secret environment values are sealed
-- together by the keyring, their names kept apart.
CREATE TABLE stacks (
    id                        TEXT PRIMARY KEY,
    name                      TEXT NOT NULL,
    space_id                  TEXT NOT NULL REFERENCES spaces (id),
    -- NULL once its integration was deleted with `force`.
    integration_id            TEXT REFERENCES integrations (id) ON DELETE SET NULL,
    project_id                BIGINT NOT NULL,
    repository                TEXT NOT NULL,
    branch                    TEXT NOT NULL,
    project_root              TEXT NOT NULL,
    additional_project_globs  TEXT NOT NULL,
    labels                    TEXT NOT NULL,
    autodeploy                BIGINT NOT NULL CHECK (autodeploy IN (0, 1)),
    allow_forks               BIGINT NOT NULL CHECK (allow_forks IN (0, 1)),
    vendor                    TEXT NOT NULL,
    environment               TEXT NOT NULL,
    secret_environment_names  TEXT NOT NULL,
    secret_environment_sealed TEXT,
    created_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL
);

-- Events find their stacks by integration and GitLab project.
CREATE INDEX stacks_project ON stacks (integration_id, project_id);
CREATE INDEX stacks_space ON stacks (space_id);
