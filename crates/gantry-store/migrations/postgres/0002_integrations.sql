-- GitLab integrations. Secrets are sealed by the keyring
-- ("v1:<key id>:<base64>"); lists are JSON arrays of strings.
CREATE TABLE integrations (
    id                          TEXT PRIMARY KEY,
    name                        TEXT NOT NULL,
    space_id                    TEXT NOT NULL REFERENCES spaces (id),
    is_default                  BIGINT NOT NULL CHECK (is_default IN (0, 1)),
    api_host_url                TEXT NOT NULL,
    user_facing_host_url        TEXT NOT NULL,
    labels                      TEXT NOT NULL,
    description                 TEXT NOT NULL,
    token_sealed                TEXT NOT NULL,
    token_scopes                TEXT NOT NULL,
    token_expires_at            TEXT,
    token_user_id               BIGINT NOT NULL,
    token_username              TEXT NOT NULL,
    warnings                    TEXT NOT NULL,
    webhook_secret_sealed       TEXT NOT NULL,
    previous_secret_sealed      TEXT,
    previous_secret_expires_at  BIGINT,
    created_at                  BIGINT NOT NULL,
    updated_at                  BIGINT NOT NULL
);

-- At most one default integration.
CREATE UNIQUE INDEX integrations_one_default ON integrations (is_default) WHERE is_default = 1;
CREATE INDEX integrations_space ON integrations (space_id);
