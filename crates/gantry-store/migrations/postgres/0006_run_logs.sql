-- A run's log, already redacted, as ordered chunks.
CREATE TABLE run_logs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    at     BIGINT NOT NULL,
    chunk  TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
