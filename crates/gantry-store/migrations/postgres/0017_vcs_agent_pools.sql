-- VCS agent pools: agents inside a private network that dial out to
-- Gantry and carry an integration's GitLab traffic. Only the SHA-256 of a
-- pool's token is kept.
CREATE TABLE vcs_agent_pools (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    space_id   TEXT NOT NULL REFERENCES spaces (id),
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- The agents' connections, one row per connection to one server, kept
-- fresh by that server while the connection lives.
CREATE TABLE vcs_agent_connections (
    id           TEXT PRIMARY KEY,
    pool_id      TEXT NOT NULL REFERENCES vcs_agent_pools (id) ON DELETE CASCADE,
    agent_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    version      TEXT NOT NULL,
    connected_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX vcs_agent_connections_pool ON vcs_agent_connections (pool_id, last_seen_at);
