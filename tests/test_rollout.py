"""A/B rollout: a stable arm per user across processes, recorded in logs, metrics and results."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.appkeys import REQUEST_LOG
from pipeline.rollout import Rollout
from tests.conftest import wait_until

USERS = [f"user-{i}" for i in range(300)]
ARMS_SCRIPT = """
import json, sys
from pipeline.rollout import Rollout
users = json.loads(sys.stdin.read())
rollout = Rollout(True, 50)
print(json.dumps({"arms": [rollout.arm(u) for u in users], "hashes": [hash(u) for u in users[:5]]}))
"""


def arms_in_subprocess(seed: str) -> dict[str, list[Any]]:
    """Compute the arms in a fresh interpreter with its own str-hash salt."""
    env = {**os.environ, "PYTHONHASHSEED": seed}
    proc = subprocess.run(
        [sys.executable, "-c", ARMS_SCRIPT],
        input=json.dumps(USERS), env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    result: dict[str, list[Any]] = json.loads(proc.stdout)
    return result


def test_two_processes_give_every_user_the_same_arm() -> None:
    """Two interpreters with different hash salts agree on every user's arm (Python's hash() does not)."""
    first, second = arms_in_subprocess("1"), arms_in_subprocess("2")
    assert first["hashes"] != second["hashes"]  # the plan's hash() would have split users differently
    assert first["arms"] == second["arms"]
    assert first["arms"] == [Rollout(True, 50).arm(u) for u in USERS]  # and this process agrees too
    share = first["arms"].count("ai") / len(USERS)
    assert 0.35 < share < 0.65


def test_rollout_percentage_bounds_and_disable() -> None:
    """0% sends everyone to existing, 100% everyone to ai, disabled overrides the percentage."""
    assert {Rollout(True, 0).arm(u) for u in USERS} == {"existing"}
    assert {Rollout(True, 100).arm(u) for u in USERS} == {"ai"}
    assert {Rollout(False, 100).arm(u) for u in USERS} == {"existing"}


def test_raising_the_percentage_only_moves_users_into_ai() -> None:
    """A user in the ai arm at 20% stays there at 60%: rollouts grow, they don't reshuffle."""
    at_20 = {u for u in USERS if Rollout(True, 20).arm(u) == "ai"}
    at_60 = {u for u in USERS if Rollout(True, 60).arm(u) == "ai"}
    assert at_20 < at_60


async def test_arm_is_in_the_result_the_log_line_and_metrics(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each answer carries its arm; the request log line and both metrics endpoints count it."""
    client = await make_client(ai_classification_rollout_percentage=50)
    rollout = Rollout(True, 50)
    users = USERS[:20]
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        for user in users:
            resp = await client.post(
                "/api/v1/enhanced/process", json={"prompt": "a red bicycle"}, headers={"X-User-Id": user}
            )
            assert (await resp.json())["metadata"]["arm"] == rollout.arm(user)
    logged = {r.user_id: r.arm for r in caplog.records if r.name == "gateway.request"}  # type: ignore[attr-defined]
    assert logged == {u: rollout.arm(u) for u in users}
    expected_ai = sum(rollout.arm(u) == "ai" for u in users)
    metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert metrics["classifications_by_arm"].get("ai", 0) == expected_ai
    assert metrics["classifications_by_arm"].get("existing", 0) == len(users) - expected_ai
    prometheus = await (await client.get("/metrics")).text()
    assert f'gateway_rollout_arm_total{{arm="ai"}} {expected_ai}' in prometheus


@pytest.mark.parametrize(("percentage", "enabled", "compared_arm"), [(0, True, "ai"), (100, False, "existing")])
async def test_compare_runs_the_ai_path_whatever_the_rollout_says_for_the_user(
    make_client: Any, percentage: int, enabled: bool, compared_arm: str
) -> None:
    """A user outside the rollout still gets the AI arm in /compare (they saw the rules twice);
    only the kill switch turns it off."""
    client = await make_client(ai_classification_rollout_percentage=percentage, ai_classification_enabled=enabled)
    body = await (await client.post("/api/v1/enhanced/compare", json={"prompt": "give me curtain bangs"})).json()
    assert body["ai_classification"]["metadata"]["arm"] == compared_arm
    assert body["existing_system"]["metadata"]["arm"] == "existing"
    plain = await (await client.post("/api/v1/enhanced/process", json={"prompt": "give me curtain bangs"})).json()
    assert plain["metadata"]["arm"] == "existing"  # outside /compare the rollout stands


async def test_compare_logs_both_arms(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """/compare runs both arms, and its log line says so."""
    client = await make_client()
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        await client.post("/api/v1/enhanced/compare", json={"prompt": "a red bicycle"})
    (line,) = [r for r in caplog.records if r.name == "gateway.request"]
    assert line.arm == "both"  # type: ignore[attr-defined]


async def test_arm_is_in_the_analytics_rows(postgres_db: str, make_client: Any, tmp_path: Path) -> None:
    """Both log tables record each request's arm, so the two arms can be compared in SQL."""
    client = await make_client(
        database_url=postgres_db,
        analytics_spill_path=str(tmp_path / "spill.jsonl"),
        analytics_flush_seconds=0.05,
        ai_classification_rollout_percentage=50,
    )
    rollout = Rollout(True, 50)
    users = [next(u for u in USERS if rollout.arm(u) == arm) for arm in ("ai", "existing")]
    for user in users:
        resp = await client.post(
            "/api/v1/enhanced/process", json={"prompt": "a red bicycle"}, headers={"X-User-Id": user}
        )
        assert resp.status == 200
    writer = client.app[REQUEST_LOG]
    await wait_until(lambda: writer.stats.written == 2, timeout=10)
    conn = await asyncpg.connect(postgres_db)
    try:
        for table in ("intent_classification_logs", "model_selection_logs"):
            rows = await conn.fetch(f"SELECT user_id, arm FROM {table}")
            assert {r["user_id"]: r["arm"] for r in rows} == {users[0]: "ai", users[1]: "existing"}
    finally:
        await conn.close()
    await client.close()
