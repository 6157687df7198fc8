-- Request logs: one row per classified request in each table, written in batches by the gateway.
-- The gateway sets request_id and created_at itself, so a batch written twice (a commit whose
-- acknowledgement was lost, a spill file replayed again) is recognised and skipped.

CREATE TABLE intent_classification_logs (
    id BIGSERIAL,
    request_id UUID NOT NULL,
    user_id TEXT NOT NULL,
    prompt TEXT,                       -- NULL unless LOG_PROMPTS=full
    prompt_sha256 TEXT,                -- NULL when LOG_PROMPTS=none
    classified_workflow TEXT NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    processing_time_ms INTEGER NOT NULL,
    used_fallback BOOLEAN NOT NULL DEFAULT FALSE,
    cache_hit BOOLEAN NOT NULL DEFAULT FALSE,
    circuit_breaker_state TEXT,
    rate_limited BOOLEAN NOT NULL DEFAULT FALSE,
    intent_source TEXT,                -- llm | local | rules
    arm TEXT,                          -- A/B arm: ai | existing
    route TEXT,                        -- process | stream | compare
    trace_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A key on a partitioned table must include the partition column.
    PRIMARY KEY (id, created_at),
    UNIQUE (request_id, created_at)
) PARTITION BY RANGE (created_at);

-- Rows of a month with no partition yet (a clock far off, a spill file replayed months later)
-- land here instead of failing; ensure_intent_log_partitions moves them out.
CREATE TABLE intent_classification_logs_default PARTITION OF intent_classification_logs DEFAULT;

-- Plain CREATE INDEX: CONCURRENTLY is refused on a partitioned table and inside a transaction.
CREATE INDEX idx_intent_logs_user_time ON intent_classification_logs (user_id, created_at DESC);
CREATE INDEX idx_intent_logs_workflow_confidence
    ON intent_classification_logs (classified_workflow, confidence DESC);
CREATE INDEX idx_intent_logs_performance ON intent_classification_logs (used_fallback, cache_hit, rate_limited);
CREATE INDEX idx_intent_logs_trace ON intent_classification_logs (trace_id);

-- Monthly partitions (UTC) for this month and `months_ahead` more; safe to call any time,
-- from any number of gateways at once.
CREATE FUNCTION ensure_intent_log_partitions(months_ahead integer DEFAULT 1)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    this_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    lo timestamptz;
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ensure_intent_log_partitions'));
    FOR i IN 0..months_ahead LOOP
        lo := (this_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        hi := (this_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        part := 'intent_classification_logs_' || to_char(this_month + make_interval(months => i), 'YYYY_MM');
        CONTINUE WHEN to_regclass(quote_ident(part)) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE intent_classification_logs INCLUDING DEFAULTS)', part);
        -- ATTACH refuses while the default partition holds rows of this range: move them first.
        EXECUTE format(
            'WITH moved AS (DELETE FROM intent_classification_logs_default'
            ' WHERE created_at >= %L AND created_at < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
            lo, hi, part);
        EXECUTE format(
            'ALTER TABLE intent_classification_logs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
            part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

CREATE TABLE model_selection_logs (
    id BIGSERIAL PRIMARY KEY,
    request_id UUID NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    generation_id TEXT,                -- set by the generation service, not by the gateway
    workflow_type TEXT NOT NULL,
    selected_model TEXT NOT NULL,
    fallback_models TEXT[],
    estimated_cost DOUBLE PRECISION,   -- US dollars, from the model catalog
    actual_cost DOUBLE PRECISION,      -- known only after generation
    estimated_time INTEGER,            -- seconds
    actual_time INTEGER,               -- seconds
    success BOOLEAN,
    error_message TEXT,
    arm TEXT,
    trace_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_model_logs_user_time ON model_selection_logs (user_id, created_at DESC);
CREATE INDEX idx_model_logs_workflow_success ON model_selection_logs (workflow_type, success);
CREATE INDEX idx_model_logs_created ON model_selection_logs (created_at);
