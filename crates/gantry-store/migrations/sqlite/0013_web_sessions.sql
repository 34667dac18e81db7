-- Sessions of the web UI: the SHA-256 of the cookie's secret, never the
-- secret; a session ends with its key, on sign-out, or after 12 h idle.
CREATE TABLE web_sessions (
    id           TEXT PRIMARY KEY,
    api_key_id   TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_idle ON web_sessions (last_seen_at);
