-- The worker executing a run, and until when its lease holds.
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at BIGINT;
