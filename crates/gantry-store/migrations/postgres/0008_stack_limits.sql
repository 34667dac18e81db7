-- Per-stack limits of a run's phases (DESIGN.md section 5 defaults).
ALTER TABLE stacks ADD COLUMN run_timeout_seconds BIGINT NOT NULL DEFAULT 4200;
ALTER TABLE stacks ADD COLUMN no_output_timeout_seconds BIGINT NOT NULL DEFAULT 600;
