-- The secret environment of proposed runs (previews of unreviewed code),
-- sealed like `secret_environment`. NULL names: not set, so proposed runs
-- get `secret_environment`; a JSON list (even empty): proposed runs get
-- these instead, and never the tracked runs' secrets.
ALTER TABLE stacks ADD COLUMN proposed_secret_environment_names TEXT;
ALTER TABLE stacks ADD COLUMN proposed_secret_environment_sealed TEXT;
