"""In-memory hourly and daily buckets behind the dashboard when there is no Postgres."""

from __future__ import annotations

from typing import Any

from observability.timeline import DAY, HOUR, Timeline


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(timeline: Timeline, workflow: str, *, cost: float = 0.04, fallback: bool = False) -> None:
    timeline.record(
        workflow=workflow, confidence=0.5, estimated_cost=cost, fallback_used=fallback, cache_hit=False
    )


def test_results_fall_into_hour_and_day_buckets() -> None:
    """Rows per workflow and hour, and per day, shaped like the analytics views."""
    clock = Clock(10 * DAY + 5 * HOUR + 10)
    timeline = Timeline(clock=clock)
    record(timeline, "hair_styling", cost=0.05)
    record(timeline, "hair_styling", cost=0.05, fallback=True)
    clock.now += HOUR
    record(timeline, "image_generation")
    snap: Any = timeline.snapshot()
    rows = [(r["classified_workflow"], r["total_requests"], r["fallback_count"]) for r in snap["intents"]]
    assert rows == [
        ("image_generation", 1, 0),
        ("hair_styling", 2, 1),
    ]
    assert snap["intents"][1]["hour"] == "1970-01-11T05:00:00+00:00"
    assert snap["costs"] == [
        {"day": "1970-01-11T00:00:00+00:00", "total_generations": 3, "total_estimated_cost": 0.14}
    ]


def test_buckets_older_than_the_window_are_dropped() -> None:
    """Memory stays bounded: old hours and days go when new buckets open."""
    clock = Clock(100 * DAY)
    timeline = Timeline(hours=2, days=1, clock=clock)
    record(timeline, "hair_styling")
    clock.now += 3 * HOUR
    record(timeline, "style_transfer")
    snap: Any = timeline.snapshot()
    assert [r["classified_workflow"] for r in snap["intents"]] == ["style_transfer"]
    clock.now += 2 * DAY
    record(timeline, "style_transfer")
    assert len(timeline.snapshot()["costs"]) == 1  # type: ignore[arg-type]


async def test_metrics_json_carries_the_timeline(client: Any) -> None:
    """Each answered request lands in this hour's bucket of GET /metrics."""
    for prompt in ("change my hair to blonde", "a cat playing in the garden", "a red fox"):
        resp = await client.post("/api/v1/enhanced/process", json={"prompt": prompt})
        assert resp.status == 200
    timeline = (await (await client.get("/api/v1/enhanced/metrics")).json())["timeline"]
    counts = {r["classified_workflow"]: r["total_requests"] for r in timeline["intents"]}
    assert counts == {"hair_styling": 1, "image_generation": 2}
    assert timeline["costs"][0]["total_generations"] == 3
    assert timeline["costs"][0]["total_estimated_cost"] > 0
