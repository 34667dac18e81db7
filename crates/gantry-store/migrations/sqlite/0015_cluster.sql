-- Facts every server of one deployment shares: the master-key canary (a
-- known value sealed by the first server; a server that cannot open it
-- holds another master key and refuses to start).
CREATE TABLE cluster_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
