-- Webhook deliveries: stored before they are acknowledged.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    integration_id  TEXT NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    event           TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('accepted', 'duplicate', 'ignored', 'rejected')),
    body            BYTEA,
    body_sha256     TEXT NOT NULL,
    idempotency_key TEXT,
    event_uuid      TEXT,
    webhook_uuid    TEXT,
    instance        TEXT,
    user_agent      TEXT,
    duplicate_of    TEXT,
    outcome         TEXT,
    runs            TEXT NOT NULL DEFAULT '[]',
    error           TEXT,
    received_at     BIGINT NOT NULL,
    processed_at    BIGINT,
    times_processed BIGINT NOT NULL DEFAULT 0
);

-- One accepted delivery per Idempotency-Key and integration.
CREATE UNIQUE INDEX deliveries_accepted_key ON deliveries (integration_id, idempotency_key)
    WHERE status = 'accepted' AND idempotency_key IS NOT NULL;
CREATE INDEX deliveries_accepted_body ON deliveries (integration_id, body_sha256, received_at)
    WHERE status = 'accepted';
CREATE INDEX deliveries_log ON deliveries (integration_id, received_at, id);
CREATE INDEX deliveries_unpruned ON deliveries (processed_at) WHERE body IS NOT NULL;
