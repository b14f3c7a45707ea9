-- A provider retries a delivery that failed. Such a retry must be processed, not treated as
-- a duplicate: the failed delivery is marked superseded and the retry points at it.
ALTER TABLE {schema}.webhook_logs ADD COLUMN IF NOT EXISTS retry_of bigint;
ALTER TABLE {schema}.webhook_logs ADD COLUMN IF NOT EXISTS superseded boolean NOT NULL DEFAULT false;
DROP INDEX IF EXISTS {schema}.webhook_logs_original_idx;
CREATE UNIQUE INDEX IF NOT EXISTS webhook_logs_active_idx
    ON {schema}.webhook_logs (provider, provider_event_id)
    WHERE duplicate_of IS NULL AND signature_valid AND NOT superseded AND provider_event_id IS NOT NULL;
