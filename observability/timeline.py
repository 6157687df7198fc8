"""Hourly and daily buckets of this instance's results, for the dashboard when there is no Postgres.

The rows have the shape of the analytics views (intent_analytics per workflow and hour,
cost_analytics per day), so the dashboard reads either source the same way. Buckets older
than the window are dropped as new ones open; memory is bounded by hours x workflows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

HOUR = 3600
DAY = 24 * HOUR


class _Intent:
    __slots__ = ("cache_hits", "confidence_sum", "fallback_count", "total_requests")

    def __init__(self) -> None:
        self.total_requests = 0
        self.fallback_count = 0
        self.cache_hits = 0
        self.confidence_sum = 0.0


class _Cost:
    __slots__ = ("total_estimated_cost", "total_generations")

    def __init__(self) -> None:
        self.total_generations = 0
        self.total_estimated_cost = 0.0


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


class Timeline:
    def __init__(
        self, *, hours: int = 7 * 24, days: int = 30, clock: Callable[[], float] = time.time
    ) -> None:
        self.hours = hours
        self.days = days
        self._clock = clock
        self._intents: dict[tuple[int, str], _Intent] = {}
        self._costs: dict[int, _Cost] = {}

    def record(
        self, *, workflow: str, confidence: float, estimated_cost: float, fallback_used: bool, cache_hit: bool
    ) -> None:
        now = int(self._clock())
        hour, day = now - now % HOUR, now - now % DAY
        intent = self._intents.get((hour, workflow))
        if intent is None:
            self._prune(now)
            intent = self._intents[hour, workflow] = _Intent()
        intent.total_requests += 1
        intent.fallback_count += fallback_used
        intent.cache_hits += cache_hit
        intent.confidence_sum += confidence
        cost = self._costs.setdefault(day, _Cost())
        cost.total_generations += 1
        cost.total_estimated_cost += estimated_cost

    def _prune(self, now: int) -> None:
        oldest_hour, oldest_day = now - self.hours * HOUR, now - self.days * DAY
        for hour_key in [k for k in self._intents if k[0] <= oldest_hour]:
            del self._intents[hour_key]
        for day_key in [k for k in self._costs if k <= oldest_day]:
            del self._costs[day_key]

    def snapshot(self) -> dict[str, object]:
        """{"intents": [...per hour and workflow], "costs": [...per day]}, newest first."""
        return {
            "intents": [
                {
                    "hour": _iso(hour),
                    "classified_workflow": workflow,
                    "total_requests": b.total_requests,
                    "avg_confidence": b.confidence_sum / b.total_requests,
                    "fallback_count": b.fallback_count,
                    "cache_hits": b.cache_hits,
                }
                for (hour, workflow), b in sorted(self._intents.items(), reverse=True)
            ],
            "costs": [
                {
                    "day": _iso(day),
                    "total_generations": b.total_generations,
                    "total_estimated_cost": round(b.total_estimated_cost, 6),
                }
                for day, b in sorted(self._costs.items(), reverse=True)
            ],
        }
