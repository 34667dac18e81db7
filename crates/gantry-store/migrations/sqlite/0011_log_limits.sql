-- A run's stored log is capped by its stack's limit (default 50 MiB);
-- what is past it is counted, not kept.
ALTER TABLE stacks ADD COLUMN log_limit_bytes BIGINT NOT NULL DEFAULT 52428800;
ALTER TABLE runs ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN log_dropped_bytes BIGINT NOT NULL DEFAULT 0;
