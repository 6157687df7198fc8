"""One frozen, typed configuration, built once from the environment at start-up."""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

import msgspec

from pipeline.types import MiniLMRuntime

ClassifierName = Literal["rules", "local", "llm", "cascade"]
OTEL_SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)  # fmt: skip
SearchProviderName = Literal["auto", "searxng", "brave", "none"]
_LOG_LEVELS = tuple(logging.getLevelNamesMapping())  # what logging's setLevel takes: WARN, FATAL too
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")  # asyncpg's
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

# Numbers the gateway cannot work with are refused when the environment is read, naming the
# variable: SSE_HEARTBEAT_SECONDS=0 sent keep-alives in a busy loop (2.6 MB in 2 s a stream),
# ANALYTICS_FLUSH_SECONDS=0 would spin the log writer, a negative limit refused everyone.
Seconds = Annotated[float, msgspec.Meta(gt=0)]  # a wait or an interval: zero would spin or never wait
ZeroOrMore = Annotated[float, msgspec.Meta(ge=0)]  # a wait or a budget where 0 means "none"
Count = Annotated[int, msgspec.Meta(ge=1)]
CountOrOff = Annotated[int, msgspec.Meta(ge=0)]  # 0 turns the limit, cache or bound off
Dollars = Annotated[float, msgspec.Meta(ge=0)]
Share = Annotated[float, msgspec.Meta(ge=0, le=1)]


class ConfigError(ValueError):
    """An environment variable has a value the gateway cannot use."""


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    log_level: str = "INFO"

    # Classification
    intent_classifier: ClassifierName = "rules"
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    classification_timeout: Seconds = 10.0  # seconds, one deadline per classification
    max_concurrent_classifications: Count = 8
    classification_queue_timeout: ZeroOrMore = 2.0
    local_confidence_threshold: Share = 0.6
    local_escalate_below: Share | None = None  # None: the artifact's threshold (0.8)
    local_runtime: MiniLMRuntime = "onnx-int8"  # what runs MiniLM for escalated prompts
    # An escalation that would queue longer than this for MiniLM gets the fast tier's answer
    local_escalation_budget_ms: ZeroOrMore = 25.0
    ai_classification_enabled: bool = True
    ai_classification_rollout_percentage: Annotated[int, msgspec.Meta(ge=0, le=100)] = 100

    # LLM client (any OpenAI-compatible server; see README)
    llm_backoff_base: ZeroOrMore = 0.5  # seconds: first retry waits up to this (full jitter), then 2x
    llm_max_tokens: Count = 300
    llm_price_input_per_million: Dollars = 0.15  # USD per 1M tokens, for the spend estimate
    llm_price_output_per_million: Dollars = 0.60

    # LLM circuit breaker
    circuit_breaker_failure_threshold: Count = 5
    circuit_breaker_timeout: Seconds = 60.0
    circuit_breaker_success_threshold: Count = 2  # half-open probe successes that close it

    # Redis: cache and limits (unset: in-process memory, limits per instance)
    redis_url: str | None = None  # redis+cluster://host:port (or REDIS_CLUSTER=true) for a cluster
    redis_cluster: bool = False
    redis_timeout: Seconds = 0.5  # seconds, connect and every command: Redis trouble must stay cheap
    redis_health_interval: Seconds = 2.0  # seconds between background pings (reconnect detection)
    # Connections to Redis per instance (per node on a cluster): one per command in flight.
    redis_max_connections: Count = 128
    redis_key_prefix: str = "gw:"
    intent_cache_ttl: CountOrOff = 3600  # seconds; 0 disables the intent cache
    rate_limit_requests_per_minute: CountOrOff = 100  # per user; 0 disables this limit
    rate_limit_requests_per_hour: CountOrOff = 1000
    cost_limit_per_hour: Dollars = 50.0  # US dollars of estimated generation cost
    rate_limit_fail_mode: Literal["open", "closed"] = "open"  # when Redis is unreachable

    # Postgres analytics (unset: no logging to a database)
    database_url: str | None = None
    database_migrate_on_start: bool = True
    analytics_refresh_seconds: Seconds = 60.0
    log_prompts: Literal["full", "hash", "none"] = "full"
    # With a key, LOG_PROMPTS=hash stores HMAC-SHA256(key, prompt): a plain digest of a short
    # prompt can be reversed by hashing guesses.
    log_prompt_hash_key: str | None = None
    analytics_spill_path: str = "var/analytics-spill.jsonl"
    analytics_buffer_rows: Count = 10_000  # rows held in memory while Postgres is away; beyond: spill
    analytics_batch_rows: Count = 500
    analytics_flush_seconds: Seconds = 0.25

    # Reference search (auto: SearXNG when SEARXNG_URL is set, else Brave with a key, else off)
    reference_search_provider: SearchProviderName = "auto"
    searxng_url: str | None = None
    brave_search_api_key: str | None = None
    reference_search_timeout: Seconds = 3.0  # seconds, per provider call
    reference_search_results: Count = 4
    reference_search_cache_ttl: CountOrOff = 86400

    # SSE
    sse_heartbeat_seconds: Seconds = 15.0
    # On SIGTERM, seconds open streams get to finish; then each ends with an `error` event
    # (shutting_down) the client can retry on, and the process exits soon after.
    shutdown_grace_seconds: ZeroOrMore = 8.0
    # Seconds for a request body (at most 64 KiB) to arrive once its headers have; then 408.
    request_body_timeout: Seconds = 10.0

    # Observability: the standard OpenTelemetry variables (README "Observability")
    otel_sdk_disabled: bool = False
    otel_service_name: str | None = None  # unset: service.name from the attributes, or intent-gateway
    otel_resource_attributes: str | None = None  # "key=value,key=value"
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: Share | None = None
    otel_exporter_otlp_endpoint: str | None = None  # unset: traces stay in the /debug/traces buffer
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_headers: str | None = None
    debug_traces_limit: Count = 200  # recent traces kept in memory for /debug/traces
    # @tags one user may keep: without a bound, one user's saves (thousands a second) filled the
    # process's memory, and listing them returned a 118 MB body that stalled every other request.
    max_tags_per_user: Count = 500
    # And in all, in the memory store (no DATABASE_URL): where callers name themselves (open mode,
    # X-User-Id), a new user id per save would otherwise pass the per-user bound.
    max_tags_in_memory: Count = 100_000

    # Security (issue 10): image URL policy
    image_url_allowed_hosts: str = "supabase.co"  # comma-separated; exact or dot-suffix match
    image_url_allow_http: bool = False  # development only: accept http:// image URLs
    # Authentication: "user:key[:admin]" comma-separated; HS256 JWTs; open mode off loopback
    gateway_api_keys: str | None = None
    gateway_jwt_secret: str | None = None
    gateway_jwt_audience: str | None = None
    gateway_jwt_issuer: str | None = None
    gateway_allow_anonymous: bool = False
    # Browser apps on other origins that may call the gateway: "scheme://host[:port]", comma-
    # separated, or "*"; unset: same origin only (gateway/cors.py).
    cors_allowed_origins: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the app's variable names; unset means the embedded default."""
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            value = env.get(field.name.upper())
            if value is not None and value != "":
                raw[field.name] = value
        if "intent_classifier" not in raw:
            # With an API key the cascade pays for the LLM only when the local answer is unsure;
            # without one the embedded classifier answers on its own.
            raw["intent_classifier"] = "cascade" if "openai_api_key" in raw else "local"
        if "max_concurrent_classifications" not in raw:
            raw["max_concurrent_classifications"] = max(4, 4 * (os.cpu_count() or 1))
        try:
            # strict=False converts "100" -> 100 and "true" -> True, as environment text needs.
            settings = msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_name_variable(str(exc), raw, cls)) from None
        settings.check()
        return settings

    def check(self) -> None:
        """What one field's constraint cannot say: fields that depend on each other or on text."""
        if self.analytics_batch_rows > self.analytics_buffer_rows:
            raise ConfigError("ANALYTICS_BATCH_ROWS must be at most ANALYTICS_BUFFER_ROWS")
        if self.otel_traces_sampler not in OTEL_SAMPLERS:
            raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(OTEL_SAMPLERS)}")
        if self.gateway_jwt_secret is not None and len(self.gateway_jwt_secret.encode()) < 32:
            raise ConfigError("GATEWAY_JWT_SECRET must be at least 32 bytes (HS256, RFC 7518 3.2)")
        if self.intent_classifier in ("llm", "cascade") and not (
            self.openai_api_key or self.openai_base_url
        ):
            # A local server (vLLM, Ollama, llama.cpp) needs a base URL but usually no key.
            raise ConfigError(
                f"INTENT_CLASSIFIER={self.intent_classifier} needs OPENAI_API_KEY or OPENAI_BASE_URL"
            )
        if self.reference_search_provider == "searxng" and not self.searxng_url:
            raise ConfigError("REFERENCE_SEARCH_PROVIDER=searxng needs SEARXNG_URL")
        if self.reference_search_provider == "brave" and not self.brave_search_api_key:
            raise ConfigError("REFERENCE_SEARCH_PROVIDER=brave needs BRAVE_SEARCH_API_KEY")
        if self.searxng_url and not self.searxng_url.startswith(("http://", "https://")):
            raise ConfigError("SEARXNG_URL must be an http(s) URL")
        self._check_urls()
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")
        origins = self.cors_origins()
        if "*" in origins and len(origins) > 1:
            raise ConfigError("CORS_ALLOWED_ORIGINS: * allows every origin, so it stands alone")
        for origin in origins - {"*"}:
            if not _is_origin(origin):
                raise ConfigError(f"CORS_ALLOWED_ORIGINS: {origin!r} is not an origin as browsers send it: "
                                  "scheme://host[:port], an ASCII (punycode) host, no default port, "
                                  "path or trailing slash")

    def _check_urls(self) -> None:
        """Refuse a URL its client would only refuse later: a mistyped DATABASE_URL surfaced as
        every log row refused (set aside for good) and keys unreadable; a REDIS_URL as a traceback."""
        if self.database_url is not None:
            url = urlsplit(self.database_url)
            if url.scheme not in ("postgres", "postgresql"):
                raise ConfigError("DATABASE_URL must be a postgresql://user@host:port/database URL")
            sslmodes = parse_qs(url.query).get("sslmode", [])
            if any(mode not in _SSLMODES for mode in sslmodes):
                raise ConfigError(f"DATABASE_URL: sslmode must be one of {', '.join(_SSLMODES)}")
        # As redis-py and gateway/redis.py read it: scheme://, case and all (urlsplit lower-cases).
        scheme, sep, _ = (self.redis_url or "").partition("://")
        if self.redis_url is not None and not (sep and scheme in _REDIS_SCHEMES):
            schemes = ", ".join(f"{scheme}://" for scheme in _REDIS_SCHEMES)
            raise ConfigError(f"REDIS_URL must start with one of {schemes}")
        for name in ("openai_base_url", "otel_exporter_otlp_endpoint", "otel_exporter_otlp_traces_endpoint"):
            value = getattr(self, name)
            url = urlsplit(value or "")
            if value is not None and not (url.scheme in ("http", "https") and url.hostname):
                raise ConfigError(f"{name.upper()} must be an http(s) URL")

    def cors_origins(self) -> frozenset[str]:
        """CORS_ALLOWED_ORIGINS as browsers send Origin (lower case); empty: CORS off."""
        value = self.cors_allowed_origins or ""
        return frozenset(origin.strip().lower() for origin in value.split(",") if origin.strip())

    def search_provider(self) -> Literal["searxng", "brave"] | None:
        """The image search provider in use, or None: no reference search step."""
        if self.reference_search_provider != "auto":
            return None if self.reference_search_provider == "none" else self.reference_search_provider
        if self.searxng_url:
            return "searxng"
        return "brave" if self.brave_search_api_key else None


def _is_origin(origin: str) -> bool:
    """Whether a browser could send `origin` as its Origin header (so it can ever match)."""
    parts = urlsplit(origin)
    try:
        port = parts.port  # a ValueError for "abc" or 99999
    except ValueError:
        return False
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return (default is not None and bool(parts.hostname) and origin.isascii() and port != default
            and not (parts.path or "?" in origin or "#" in origin or "@" in parts.netloc))


_KINDS = {"`int`": "a whole number", "`float`": "a number", "`bool`": "true or false"}


def _name_variable(message: str, raw: Mapping[str, object], cls: type[Settings]) -> str:
    """msgspec's "Expected `float` > 0.0 - at `$.sse_heartbeat_seconds`" in the words of the one
    who set it: "SSE_HEARTBEAT_SECONDS must be a number > 0.0, not '0'"."""
    if "`$." not in message:
        return message
    head, _, path = message.rpartition("`$.")
    field = path.rstrip("`")
    problem = head.removesuffix(" - at ")
    given = f", not {raw[field]!r}" if field in raw else ""
    if problem.startswith("Expected "):
        wanted = problem.removeprefix("Expected ").split(", got ")[0]
        for kind, words in _KINDS.items():
            wanted = wanted.replace(kind, words)
        return f"{field.upper()} must be {wanted}{given}"
    choices = next((typing.get_args(f.type) for f in msgspec.structs.fields(cls) if f.name == field), ())
    if choices and all(isinstance(choice, str) for choice in choices):
        return f"{field.upper()} must be one of {', '.join(choices)}{given}"
    return f"{field.upper()}: {problem}"
