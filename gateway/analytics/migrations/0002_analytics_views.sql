-- Analytics read from materialized views refreshed by the gateway every ANALYTICS_REFRESH_SECONDS
-- (pg_cron may be absent). Buckets are UTC hours and days. Each view has the unique index that
-- REFRESH MATERIALIZED VIEW CONCURRENTLY needs, so readers are never blocked by a refresh.

CREATE MATERIALIZED VIEW intent_analytics AS
SELECT
    classified_workflow,
    date_trunc('hour', created_at, 'UTC') AS hour,
    count(*) AS total_requests,
    avg(confidence) AS avg_confidence,
    avg(processing_time_ms)::double precision AS avg_processing_time,
    count(*) FILTER (WHERE used_fallback) AS fallback_count,
    count(*) FILTER (WHERE cache_hit) AS cache_hits,
    count(*) FILTER (WHERE rate_limited) AS rate_limited_count
FROM intent_classification_logs
WHERE created_at >= now() - interval '7 days'
GROUP BY classified_workflow, date_trunc('hour', created_at, 'UTC');

CREATE UNIQUE INDEX intent_analytics_workflow_hour ON intent_analytics (classified_workflow, hour);

-- total_cost sums actual_cost, which arrives only after generation (NULL until then);
-- the estimated columns are what the gateway knows when it picks the model.
CREATE MATERIALIZED VIEW cost_analytics AS
SELECT
    user_id,
    date_trunc('day', created_at, 'UTC') AS day,
    count(*) AS total_generations,
    sum(actual_cost) AS total_cost,
    avg(actual_cost) AS avg_cost_per_generation,
    count(*) FILTER (WHERE success) AS successful_generations,
    sum(estimated_cost) AS total_estimated_cost,
    avg(estimated_cost) AS avg_estimated_cost
FROM model_selection_logs
WHERE created_at >= now() - interval '30 days'
GROUP BY user_id, date_trunc('day', created_at, 'UTC');

CREATE UNIQUE INDEX cost_analytics_user_day ON cost_analytics (user_id, day);

-- One refresher at a time across gateway instances; the others skip the round (returns false).
CREATE FUNCTION refresh_analytics_views() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('refresh_analytics_views')) THEN
        RETURN false;
    END IF;
    REFRESH MATERIALIZED VIEW CONCURRENTLY intent_analytics;
    REFRESH MATERIALIZED VIEW CONCURRENTLY cost_analytics;
    RETURN true;
END
$$;
