"""In-process request counters behind the JSON metrics endpoint."""

from __future__ import annotations

from collections import Counter


class RequestStats:
    """Counts per instance; cheap enough to update on every request."""

    def __init__(self, pipeline_routes: frozenset[str] = frozenset()) -> None:
        # The routes that run the pipeline, whose errors `error_rate` counts: over every request,
        # health probes and scrapes diluted it (23 of 32 requests in one SRE's run).
        self.pipeline_routes = pipeline_routes
        self.requests: Counter[str] = Counter()  # by route
        self.statuses: Counter[int] = Counter()
        self.responses: Counter[tuple[str, int]] = Counter()  # by (route, status), for /metrics
        self.sources: Counter[str] = Counter()  # which classifier decided
        self.arms: Counter[str] = Counter()
        self.workflows: Counter[str] = Counter()
        # Embedded classifier runs by the tier that ran last (static, minilm): counted by the
        # classifier itself, once per run, whoever made the final answer (the LLM may have).
        self.embedded_runs: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # by error code
        self.classifications = 0
        self.cache_hits = 0
        self.fallbacks = 0
        # The AI arm's own (the app plan's AIClassificationMonitor): the rules arm and /compare's
        # second run would dilute its fallback rate (a 10% rollout: a 100% rate read as ~10%).
        self.ai_fallbacks = 0  # its answers are arms["ai"]
        self.ai_seconds = 0.0  # their processing_time, summed

    def record_request(self, route: str, status: int) -> None:
        self.requests[route] += 1
        self.statuses[status] += 1
        self.responses[route, status] += 1

    def record_result(
        self, *, source: str, arm: str, workflow: str, cache_hit: bool, fallback_used: bool,
        processing_seconds: float,
    ) -> None:
        self.classifications += 1
        if arm == "ai":
            self.ai_fallbacks += fallback_used
            self.ai_seconds += processing_seconds
        self.sources[source] += 1
        self.arms[arm] += 1
        self.workflows[workflow] += 1
        self.cache_hits += cache_hit
        self.fallbacks += fallback_used

    def record_error(self, code: str) -> None:
        self.errors[code] += 1

    def classification_health(self) -> dict[str, object]:
        """The app plan's AIClassificationMonitor.get_health_status, from these counts: a request
        that ended without an answer (overloaded, shutting down) is its unsuccessful one."""
        failed = sum(self.errors.values()) - self.errors["stage_failed"]  # a failed stage still answers
        total = self.classifications + failed
        success_rate = self.classifications / total if total else 1.0
        return {
            "status": "healthy" if success_rate > 0.95 else "degraded",
            "success_rate": success_rate,
            "fallback_rate": self.ai_fallbacks / max(self.arms["ai"], 1),
            "avg_processing_time": self.ai_seconds / max(self.arms["ai"], 1),
            "total_requests": total,
            "ai_classifications": self.arms["ai"],
        }

    def snapshot(self) -> dict[str, object]:
        done = max(self.classifications, 1)
        total_requests = sum(self.requests.values())
        pipeline_requests = (sum(self.requests[route] for route in self.pipeline_routes)
                             if self.pipeline_routes else total_requests)  # fmt: skip
        rates = {
            "cache_hit_rate": self.cache_hits / done,
            "fallback_rate": self.fallbacks / done,
            "error_rate": sum(self.errors.values()) / max(pipeline_requests, 1),
        }
        return {
            "requests": total_requests,
            "requests_by_route": dict(self.requests),
            "responses_by_status": {str(k): v for k, v in self.statuses.items()},
            "classifications": self.classifications,
            "classifications_by_source": dict(self.sources),
            "classifications_by_arm": dict(self.arms),
            "workflows": dict(self.workflows),
            "embedded_classifier_runs_by_tier": dict(self.embedded_runs),
            "cache_hits": self.cache_hits,
            "fallbacks": self.fallbacks,
            "errors": sum(self.errors.values()),
            "errors_by_code": dict(self.errors),
            "rates": rates,
            # Where the app plan's get_metrics puts them, which its dashboards read.
            "cache_hit_rate": rates["cache_hit_rate"],
            "error_rate": rates["error_rate"],
        }
