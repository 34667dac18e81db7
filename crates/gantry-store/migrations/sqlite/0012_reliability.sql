-- A run handed back to the queue because GitLab was unavailable while it
-- was being prepared is not taken again before this time.
ALTER TABLE runs ADD COLUMN not_before BIGINT;
-- The run whose write set `last_state`: a status only never goes back
-- within one run; a newer run on the same commit and ref starts afresh.
ALTER TABLE gitlab_refs ADD COLUMN run_id TEXT;
