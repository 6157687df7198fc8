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
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "5"}, "must be a probability"),
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
