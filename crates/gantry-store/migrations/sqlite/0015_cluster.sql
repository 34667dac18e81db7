-- Facts every server of one deployment shares: the master-key canary (a
-- known value sealed by the first server; a server that cannot open it
-- holds another master key and refuses to start).
CREATE TABLE cluster_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Rate limits shared by every server (the MR-note throttle): one row per
-- scope serialises takers; one row per event within the window.
CREATE TABLE rate_scopes (
    scope TEXT PRIMARY KEY
);
CREATE TABLE rate_events (
    scope TEXT NOT NULL,
    at    BIGINT NOT NULL
);
CREATE INDEX rate_events_by_scope ON rate_events (scope, at);
