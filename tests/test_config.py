"""Settings from the environment: a value the gateway cannot use stops it at start-up, naming
the variable, instead of surfacing later as a traceback or as data set aside."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "postgres//nohost"}, "DATABASE_URL must be a postgresql://"),
        ({"DATABASE_URL": "postgresql://db/gw?sslmode=sometimes"}, "DATABASE_URL: sslmode must be one of"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must start with one of"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL must start with one of"),
        ({"REDIS_URL": "Redis+Cluster://cache:6379"}, "REDIS_URL must start with one of"),  # as read
        ({"REDIS_URL": "redis:cache"}, "REDIS_URL must start with one of"),
        ({"OPENAI_BASE_URL": "not-a-url"}, "OPENAI_BASE_URL must be an http"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT must be an http"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "5"},
         "^OTEL_TRACES_SAMPLER_ARG must be a number <= 1.0, not '5'$"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL must be one of"),
    ],
)
def test_a_value_its_client_would_refuse_later_is_refused_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_values_those_clients_take_are_accepted() -> None:
    settings = Settings.from_env({
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/gateway?sslmode=disable",
        "REDIS_URL": "rediss+cluster://cache:6379/0",
        "OPENAI_BASE_URL": "http://localhost:11434/v1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "LOG_LEVEL": "warn",  # logging takes it, as WARNING
    })  # fmt: skip
    assert settings.database_url is not None and settings.otel_traces_sampler_arg == 0.25
    assert Settings.from_env({"DATABASE_URL": "postgres:///gateway", "REDIS_URL": "unix:///run/redis.sock"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # Zero heartbeat sent keep-alives in a busy loop; zero flush would spin the log writer.
        ({"SSE_HEARTBEAT_SECONDS": "0"}, "SSE_HEARTBEAT_SECONDS must be a number > 0.0, not '0'"),
        ({"ANALYTICS_FLUSH_SECONDS": "-1"}, "ANALYTICS_FLUSH_SECONDS must be a number > 0.0, not '-1'"),
        ({"CLASSIFICATION_TIMEOUT": "0"}, "CLASSIFICATION_TIMEOUT must be a number > 0.0, not '0'"),
        ({"RATE_LIMIT_REQUESTS_PER_MINUTE": "-5"},
         "RATE_LIMIT_REQUESTS_PER_MINUTE must be a whole number >= 0, not '-5'"),
        ({"COST_LIMIT_PER_HOUR": "-1"}, "COST_LIMIT_PER_HOUR must be a number >= 0.0, not '-1'"),
        ({"MAX_TAGS_PER_USER": "0"}, "MAX_TAGS_PER_USER must be a whole number >= 1, not '0'"),
        ({"PORT": "eighty"}, "PORT must be a whole number, not 'eighty'"),
        ({"PORT": "70000"}, "PORT must be a whole number <= 65535, not '70000'"),
        ({"AI_CLASSIFICATION_ROLLOUT_PERCENTAGE": "150"},
         "AI_CLASSIFICATION_ROLLOUT_PERCENTAGE must be a whole number <= 100, not '150'"),
        ({"GATEWAY_ALLOW_ANONYMOUS": "maybe"}, "GATEWAY_ALLOW_ANONYMOUS must be true or false, not 'maybe'"),
        ({"INTENT_CLASSIFIER": "gpt"}, "INTENT_CLASSIFIER must be one of rules, local, llm, cascade, not 'gpt'"),
        ({"ANALYTICS_BATCH_ROWS": "600", "ANALYTICS_BUFFER_ROWS": "500"},
         "ANALYTICS_BATCH_ROWS must be at most ANALYTICS_BUFFER_ROWS"),
    ],
)
def test_a_number_or_name_the_gateway_cannot_work_with_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    assert str(refused.value) == message


def test_zero_where_zero_means_off_is_accepted() -> None:
    settings = Settings.from_env({
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "0", "RATE_LIMIT_REQUESTS_PER_HOUR": "0", "COST_LIMIT_PER_HOUR": "0",
        "INTENT_CACHE_TTL": "0", "SHUTDOWN_GRACE_SECONDS": "0", "LOCAL_ESCALATION_BUDGET_MS": "0",
        "PORT": "0",  # any free port
    })  # fmt: skip
    assert settings.rate_limit_requests_per_minute == settings.intent_cache_ttl == settings.port == 0
