-- One original delivery per provider event: a second delivery of the same verified event
-- conflicts here and is stored with duplicate_of pointing at the first.
CREATE UNIQUE INDEX IF NOT EXISTS webhook_logs_original_idx
    ON {schema}.webhook_logs (provider, provider_event_id)
    WHERE duplicate_of IS NULL AND signature_valid AND provider_event_id IS NOT NULL;
