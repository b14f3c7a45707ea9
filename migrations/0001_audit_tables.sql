-- dtc-otel audit tables, in the schema named by DTC_OTEL_AUDIT_SCHEMA (default dtc_audit);
-- `dtc-otel migrate` fills in the name when it runs or prints this file.

CREATE SCHEMA IF NOT EXISTS {schema};

-- One row per job, updated in place as the job moves through its states:
--   pending -> running -> succeeded
--                      -> retrying -> running ...   (an attempt failed, attempts remain)
--                      -> dead                      (the last attempt failed)
--                      -> failed                    (failed and marked not retryable)
CREATE TABLE IF NOT EXISTS {schema}.job_queue (
    job_id        text PRIMARY KEY,
    kind          text NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'retrying', 'dead')),
    attempts      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 1,
    last_error    text,
    payload       jsonb NOT NULL DEFAULT '{}'::jsonb,
    entity_ids    jsonb NOT NULL DEFAULT '{}'::jsonb,
    trace_id      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
-- "What is stuck?": jobs by status, oldest update first.
CREATE INDEX IF NOT EXISTS job_queue_status_updated_idx ON {schema}.job_queue (status, updated_at);
CREATE INDEX IF NOT EXISTS job_queue_entity_ids_idx ON {schema}.job_queue USING gin (entity_ids jsonb_path_ops);
CREATE INDEX IF NOT EXISTS job_queue_trace_id_idx ON {schema}.job_queue (trace_id);

-- Append-only history: one row per transition. event_id makes a replayed write a no-op.
CREATE TABLE IF NOT EXISTS {schema}.job_events (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    job_id       text NOT NULL,
    kind         text NOT NULL,
    transition   text NOT NULL,
    attempt      integer,
    error        text,
    trace_id     text,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job_id_idx ON {schema}.job_events (job_id, occurred_at);
CREATE INDEX IF NOT EXISTS job_events_trace_id_idx ON {schema}.job_events (trace_id);

-- One row per inbound webhook delivery, with the raw body exactly as received so a
-- signature can be checked again later.
CREATE TABLE IF NOT EXISTS {schema}.webhook_logs (
    id                  bigserial PRIMARY KEY,
    delivery_id         uuid NOT NULL UNIQUE,
    provider            text NOT NULL,
    event_type          text,
    provider_event_id   text,
    raw_body            bytea NOT NULL,
    headers             jsonb NOT NULL DEFAULT '{}'::jsonb,
    signature_valid     boolean,
    signature_reason    text,
    duplicate_of        bigint,
    status_code         integer,
    processing_error    text,
    entity_ids          jsonb NOT NULL DEFAULT '{}'::jsonb,
    trace_id            text,
    received_at         timestamptz NOT NULL,
    processed_at        timestamptz
);
CREATE INDEX IF NOT EXISTS webhook_logs_provider_event_idx ON {schema}.webhook_logs (provider, provider_event_id);
CREATE INDEX IF NOT EXISTS webhook_logs_received_idx ON {schema}.webhook_logs (received_at);
CREATE INDEX IF NOT EXISTS webhook_logs_entity_ids_idx ON {schema}.webhook_logs USING gin (entity_ids jsonb_path_ops);
CREATE INDEX IF NOT EXISTS webhook_logs_trace_id_idx ON {schema}.webhook_logs (trace_id);

-- Durable one-shot records such as "portal_welcome_sent" for customer 7.
CREATE TABLE IF NOT EXISTS {schema}.audit_markers (
    marker_key   text PRIMARY KEY,
    name         text NOT NULL,
    entity_ids   jsonb NOT NULL DEFAULT '{}'::jsonb,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb,
    trace_id     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_markers_entity_ids_idx ON {schema}.audit_markers USING gin (entity_ids jsonb_path_ops);

-- Named positions of backfills and other resumable loops.
CREATE TABLE IF NOT EXISTS {schema}.checkpoints (
    name        text PRIMARY KEY,
    position    jsonb NOT NULL,
    trace_id    text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The ordered log behind NOTIFY and Server-Sent Events resume. Readers catch up by id;
-- ids follow insert order, so with several writers a lower id can commit after a higher one.
CREATE TABLE IF NOT EXISTS {schema}.audit_events (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    topic        text NOT NULL,
    source_table text NOT NULL,
    row_id       text NOT NULL,
    status       text,
    payload      jsonb NOT NULL DEFAULT '{}'::jsonb,
    entity_ids   jsonb NOT NULL DEFAULT '{}'::jsonb,
    trace_id     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_events_topic_id_idx ON {schema}.audit_events (topic, id);
CREATE INDEX IF NOT EXISTS audit_events_entity_ids_idx ON {schema}.audit_events USING gin (entity_ids jsonb_path_ops);
CREATE INDEX IF NOT EXISTS audit_events_trace_id_idx ON {schema}.audit_events (trace_id);
