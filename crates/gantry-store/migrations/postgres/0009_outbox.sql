-- Every write to GitLab, stored in the transaction of the run's change
-- that causes it, and delivered in order per key.
CREATE TABLE outbox (
    id               BIGSERIAL PRIMARY KEY,
    integration_id   TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    project_id       BIGINT NOT NULL,
    -- The order key: status:<project>:<sha>:<stack>, note:<project>:<mr>:<stack>, deployment:<run>.
    key              TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('status', 'note', 'deployment')),
    run_id           TEXT NOT NULL,
    -- The run's state this write reports.
    state            TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'superseded', 'dropped')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT
);
CREATE INDEX outbox_pending ON outbox (status, next_attempt_at);
CREATE INDEX outbox_by_key ON outbox (key, id);

-- What GitLab has for a key: the note or deployment id, the last status.
CREATE TABLE gitlab_refs (
    key        TEXT PRIMARY KEY,
    remote_id  BIGINT,
    last_state TEXT,
    updated_at BIGINT NOT NULL
);

-- A token GitLab rejected pauses the integration's outbox until fixed.
ALTER TABLE integrations ADD COLUMN unhealthy_since BIGINT;
ALTER TABLE integrations ADD COLUMN unhealthy_reason TEXT;
