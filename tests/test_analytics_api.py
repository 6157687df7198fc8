"""The analytics endpoints read the materialized views the gateway refreshes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.appkeys import ANALYTICS, REQUEST_LOG
from tests.conftest import MakeClient, wait_until

INTENTS = "/api/v1/enhanced/analytics/intents"
COSTS = "/api/v1/enhanced/analytics/costs"
PROCESS = "/api/v1/enhanced/process"


async def test_views_refresh_and_endpoints_return_their_numbers(
    postgres_db: str, make_client: MakeClient, tmp_path: Path
) -> None:
    """Requests show up per workflow-hour and per user-day once the periodic refresh has run."""
    client = await make_client(
        database_url=postgres_db,
        analytics_spill_path=str(tmp_path / "spill.jsonl"),
        analytics_flush_seconds=0.05,
        analytics_refresh_seconds=0.2,
    )
    costs: dict[str, float] = {"sarah": 0.0, "omar": 0.0}
    for user, prompt in [("sarah", "change my hair to blonde with bangs")] * 3 + [
        ("omar", "a cat playing in the garden")
    ] * 2:
        resp = await client.post(PROCESS, json={"prompt": prompt}, headers={"X-User-Id": user})
        costs[user] += (await resp.json())["estimated_cost"]
    await wait_until(lambda: client.app[REQUEST_LOG].stats.written == 5, timeout=10)
    written_at = datetime.now(UTC)
    analytics = client.app[ANALYTICS]
    await wait_until(lambda: (analytics.refreshed_at or written_at) > written_at, timeout=10)

    intents = await (await client.get(INTENTS, params={"hours": "1"})).json()
    by_workflow = {b["classified_workflow"]: b for b in intents["buckets"]}
    assert intents["hours"] == 1 and intents["refreshed_at"]
    assert by_workflow["hair_styling"]["total_requests"] == 3
    assert by_workflow["image_generation"]["total_requests"] == 2
    assert 0 < by_workflow["hair_styling"]["avg_confidence"] <= 1
    assert by_workflow["hair_styling"]["fallback_count"] == 0

    report = await (await client.get(COSTS, params={"days": "1"})).json()
    by_user = {b["user_id"]: b for b in report["buckets"]}
    assert by_user["sarah"]["total_generations"] == 3 and by_user["omar"]["total_generations"] == 2
    # the gateway chose the models; whether a generation succeeded is the generation service's
    # to record (success, like actual_cost, is NULL until then), not counted as success here
    assert by_user["sarah"]["successful_generations"] == 0
    assert by_user["sarah"]["total_estimated_cost"] == pytest.approx(costs["sarah"])
    assert by_user["omar"]["avg_estimated_cost"] == pytest.approx(costs["omar"] / 2)
    assert by_user["sarah"]["total_cost"] is None  # actual cost arrives after generation


@pytest.mark.parametrize(
    ("path", "query"),
    [(INTENTS, "hours=0"), (INTENTS, "hours=abc"), (INTENTS, "hours=169"), (COSTS, "days=31"),
     (COSTS, "days=-1"), (INTENTS, "hours=%C2%B2"), (COSTS, "days=%D9%A3"), (INTENTS, "hours=" + "1" * 5000)],
)
async def test_window_is_validated(
    postgres_db: str, make_client: MakeClient, tmp_path: Path, path: str, query: str
) -> None:
    """hours must be 1..168 and days 1..30: the views keep no more."""
    client = await make_client(database_url=postgres_db, analytics_spill_path=str(tmp_path / "s.jsonl"))
    resp = await client.get(f"{path}?{query}")
    assert resp.status == 422
    assert (await resp.json())["field"] == query.split("=")[0]


@pytest.mark.parametrize("path", [INTENTS, COSTS])
async def test_without_a_database_analytics_is_not_configured(client: Any, path: str) -> None:
    """No DATABASE_URL: a clear 503 with code analytics_not_configured, the rest runs as before."""
    resp = await client.get(path)
    assert resp.status == 503
    assert (await resp.json())["error"] == "analytics_not_configured"
    health = await (await client.get("/health")).json()
    assert health["dependencies"]["postgres"] == {"state": "not_configured"}


async def test_a_bad_window_is_the_callers_422_with_or_without_a_database(client: Any) -> None:
    """The caller's own mistake comes first: fixing the database would not fix hours=999."""
    resp = await client.get(f"{INTENTS}?hours=999")
    assert (resp.status, (await resp.json())["field"]) == (422, "hours")
