-- Runs and every state they passed through.
CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    stack_id          TEXT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    kind              TEXT NOT NULL CHECK (kind IN ('tracked', 'proposed')),
    state             TEXT NOT NULL,
    reason            TEXT,
    commit_sha        TEXT NOT NULL,
    branch            TEXT NOT NULL,
    merge_request_iid BIGINT,
    trigger           TEXT NOT NULL,
    summary           TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    -- One run per (stack, commit, kind).
    UNIQUE (stack_id, commit_sha, kind)
);

CREATE INDEX runs_by_stack ON runs (stack_id, created_at, id);
CREATE INDEX runs_queued ON runs (stack_id, kind, state);

CREATE TABLE run_transitions (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL,
    state  TEXT NOT NULL,
    at     BIGINT NOT NULL,
    cause  TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
