-- Gantry keeps the project hooks of an integration (unless told not to),
-- re-checks its token, and may rotate it before it expires.
ALTER TABLE integrations ADD COLUMN manage_hooks BIGINT NOT NULL DEFAULT 1 CHECK (manage_hooks IN (0, 1));
ALTER TABLE integrations ADD COLUMN rotate_token_days_before_expiry BIGINT;
ALTER TABLE integrations ADD COLUMN token_checked_at BIGINT;
-- A rotation asked of GitLab whose new token is not stored yet: after a
-- crash it is never asked again (GitLab revokes a token family whose
-- rotated token is reused); a new `api_token` clears it.
ALTER TABLE integrations ADD COLUMN token_rotation_started_at BIGINT;

-- What Gantry last found of its hook on each project of an integration.
CREATE TABLE project_hooks (
    integration_id TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    project_id     BIGINT NOT NULL,
    path           TEXT NOT NULL,
    hook_id        BIGINT,
    state          TEXT NOT NULL CHECK (state IN ('ok', 'missing', 'drifted', 'forbidden', 'unmanaged')),
    checked_at     BIGINT NOT NULL,
    error          TEXT,
    PRIMARY KEY (integration_id, project_id)
);
