"""The JSON endpoints: /process, /compare, metrics, health, and errors as JSON."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.appkeys import BODIES_ARRIVING, SHUTTING_DOWN
from pipeline.classifiers.rules import RulesClassifier
from tests.conftest import FailingClassifier, GatedClassifier

PROCESS = "/api/v1/enhanced/process"
SUPABASE = "https://demo.supabase.co/storage/v1/object/public/images"


@pytest.mark.parametrize(
    ("body", "workflow", "model"),
    [
        ({"prompt": "change my hair to blonde with bangs"}, "hair_styling", "flux-kontext-apps/change-haircut"),
        (
            {"prompt": "put @sarah in this red dress", "working_image_url": f"{SUPABASE}/me.jpg"},
            "reference_styling",
            "flux-kontext-apps/multi-image-kontext-max",
        ),
        (
            {"prompt": "animate this sunset", "working_image_url": f"{SUPABASE}/sunset.jpg"},
            "image_to_video",
            "lightricks/ltx-video",
        ),
        ({"prompt": "cinematic video of waves with ocean sounds"}, "video_generation", "google/veo-3"),
    ],
)
async def test_readme_examples_route_to_their_workflow(
    client: Any, body: dict[str, Any], workflow: str, model: str
) -> None:
    """The README's curl examples answer with the workflow and model a user expects."""
    resp = await client.post(PROCESS, json=body)
    assert resp.status == 200
    result = await resp.json()
    assert result["workflow_type"] == workflow
    assert result["model_selection"]["model_id"] == model
    assert result["success"] is True and result["fallback_used"] is False


async def test_process_answer_has_the_fields_the_frontend_reads(client: Any) -> None:
    """Field names are a contract with the existing frontend."""
    result = await (await client.post(PROCESS, json={"prompt": "a cat playing in the garden"})).json()
    assert {
        "success", "workflow_type", "final_prompt", "model_selection", "references", "intent_confidence",
        "intent_source", "cache_hit", "reasoning", "processing_time", "estimated_cost", "estimated_time",
        "fallback_used", "trace_id", "metadata",
    } <= set(result)
    assert set(result["model_selection"]) == {
        "model_id", "provider", "reasoning", "fallback_models", "estimated_cost", "estimated_time",
    }
    assert {"requires_web_search", "web_search_query", "enhancement_applied"} <= set(result["metadata"])
    assert 0 <= result["intent_confidence"] <= 1


async def test_unknown_mention_is_reported(client: Any) -> None:
    """@tags the user never saved come back in metadata.unknown_tags."""
    result = await (await client.post(PROCESS, json={"prompt": "put @sarah in this red dress"})).json()
    assert result["metadata"]["unknown_tags"] == ["sarah"]
    assert result["references"] == []


async def test_quality_preference_picks_the_tier(client: Any) -> None:
    """speed and quality pick other models and prices for image generation."""
    async def pick(quality: str) -> dict[str, Any]:
        body = {"prompt": "a lighthouse at dawn", "user_preferences": {"quality": quality}}
        return (await (await client.post(PROCESS, json=body)).json())["model_selection"]

    assert (await pick("speed"))["model_id"] == "black-forest-labs/flux-schnell"
    assert (await pick("quality"))["estimated_cost"] == 0.08
    assert (await pick("balanced"))["model_id"] == "black-forest-labs/flux-1.1-pro"


async def test_use_ai_classification_false_uses_the_existing_rules(client: Any) -> None:
    """The frontend's toggle sends the request down the existing system's path."""
    body = {"prompt": "make my photo sharper", "use_ai_classification": False}
    result = await (await client.post(PROCESS, json=body)).json()
    assert result["intent_source"] == "rules"
    assert result["metadata"]["arm"] == "existing"


class SlowRules:
    """The rules, 0.3 s late: an AI path that takes its time."""

    name = "slow-rules"
    version = "slow-1"

    async def quick_answer(self, query: Any) -> None:
        return None

    async def classify(self, query: Any) -> Any:
        await asyncio.sleep(0.3)
        return await RulesClassifier().classify(query)


async def test_compare_times_each_path_from_its_own_start(make_client: Any) -> None:
    """The rules ran after the AI path, and their processing_time included the AI path's 0.3 s."""
    client = await make_client(classifier=SlowRules())
    result = await (await client.post("/api/v1/enhanced/compare", json={"prompt": "a cat"})).json()
    assert result["ai_classification"]["processing_time"] >= 0.3
    assert result["existing_system"]["processing_time"] < 0.2


async def test_compare_shows_both_paths_and_their_differences(client: Any) -> None:
    """/compare answers with both results and per-field difference flags."""
    resp = await client.post("/api/v1/enhanced/compare", json={"prompt": "change my hair to blonde"})
    assert resp.status == 200
    body = await resp.json()
    assert body["existing_system"]["intent_source"] == "rules"
    assert body["existing_system"]["metadata"]["arm"] == "existing"
    assert set(body["differences"]) == {"workflow_type", "model_selection", "prompt_changes"}
    same = body["ai_classification"]["workflow_type"] == body["existing_system"]["workflow_type"]
    assert body["differences"]["workflow_type"] is (not same)
    # As the app's plan defines it: the AI path rewrote the prompt (both arms may have)
    assert body["ai_classification"]["final_prompt"] != "change my hair to blonde"
    assert body["differences"]["prompt_changes"] is True
    long = "a photorealistic portrait of an old fisherman mending his nets at dawn on a pier"
    unchanged = await (await client.post("/api/v1/enhanced/compare", json={"prompt": long})).json()
    assert unchanged["ai_classification"]["final_prompt"] == long  # 8 words or more: not enriched
    assert unchanged["differences"]["prompt_changes"] is False


async def test_metrics_count_requests_and_sources(client: Any) -> None:
    """The JSON metrics reflect the requests served."""
    for _ in range(3):
        await client.post(PROCESS, json={"prompt": "a tree"})
    metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert metrics["classifications"] == 3
    assert sum(metrics["classifications_by_source"].values()) == 3
    assert metrics["requests_by_route"]["/api/v1/enhanced/process"] == 3
    assert {"cache_hit_rate", "fallback_rate", "error_rate"} <= set(metrics["rates"])
    # The app plan's names at the top level, as its get_metrics returned them.
    assert (metrics["cache_hit_rate"], metrics["error_rate"]) == (
        metrics["rates"]["cache_hit_rate"], metrics["rates"]["error_rate"])
    assert metrics["cache_hit_rate"] == 2 / 3  # "a tree" three times: the second and third hit
    assert metrics["classification_slots"]["in_use"] == 0


async def test_the_error_rate_is_over_pipeline_requests_not_probes(make_client: Any) -> None:
    """One request whose classifier fails, among health probes and scrapes: the rate is 1.0 (over
    every request it read 1 in 7)."""
    client = await make_client(classifier=FailingClassifier())
    assert (await client.post(PROCESS, json={"prompt": "a tree"})).status == 200  # a stage_failed fallback
    for _ in range(5):
        await client.get("/health")
    metrics = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert metrics["errors_by_code"] == {"stage_failed": 1}
    assert metrics["rates"]["error_rate"] == 1.0


async def test_the_plans_system_health_view_counts_answers_fallbacks_and_time(
    make_client: Any,
) -> None:
    """/api/v1/enhanced/health is the app plan's get_system_health: its dashboards read these."""
    client = await make_client(classifier=FailingClassifier())
    assert (await client.post(PROCESS, json={"prompt": "a tree"})).status == 200  # a fallback answer
    assert (await client.post(PROCESS, json={"prompt": "a tree", "use_ai_classification": False})).status == 200
    view = await (await client.get("/api/v1/enhanced/health")).json()
    classification = view["ai_classification"]
    assert classification["total_requests"] == 2 and classification["success_rate"] == 1.0
    # Of the AI arm's answers (the rules arm's would dilute it): the one there fell back.
    assert classification["ai_classifications"] == 1 and classification["fallback_rate"] == 1.0
    assert classification["status"] == "healthy"
    assert 0 < classification["avg_processing_time"] < 5
    assert view["model_availability"]["classifier"]["state"] == "ok"
    assert view["cache_status"]["redis"] == {"state": "not_configured"}
    assert view["overall_status"] == "healthy" and view["timestamp"].endswith("+00:00")


async def test_health_reports_ok_and_dependencies(client: Any) -> None:
    """/health says ok with nothing external configured."""
    body = await (await client.get("/health")).json()
    assert body["status"] == "ok"
    assert body["dependencies"]["redis"]["state"] == "not_configured"


async def test_unknown_route_and_method_answer_json(client: Any) -> None:
    """404 and 405 are JSON like every other error."""
    missing = await client.get("/nope")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"
    wrong = await client.get(PROCESS)
    assert wrong.status == 405 and "POST" in wrong.headers["Allow"]
    assert (await wrong.json())["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("body", "workflow", "missing"),
    [
        ({"prompt": "animate this sunset"}, "image_to_video", True),
        ({"prompt": "animate this sunset", "working_image_url": f"{SUPABASE}/sunset.jpg"}, "image_to_video", False),
        ({"prompt": "change my hair to blonde with bangs"}, "hair_styling", True),
        ({"prompt": "change my hair to blonde with bangs", "uploaded_image_urls": [f"{SUPABASE}/me.jpg"]},
         "hair_styling", False),  # a photo just uploaded is an image to work on
        ({"prompt": "a cat on a sofa"}, "image_generation", False),
    ],
)
async def test_a_workflow_that_works_on_an_image_says_when_none_came(
    client: Any, body: dict[str, Any], workflow: str, missing: bool
) -> None:
    """The frontend can ask for the image before a generation that would fail without one."""
    result = await (await client.post(PROCESS, json=body)).json()
    assert (result["workflow_type"], result["metadata"]["image_missing"]) == (workflow, missing)


@pytest.mark.parametrize("path", [PROCESS, "/api/v1/enhanced/compare"])
async def test_on_shutdown_a_json_request_past_its_grace_answers_503_it_can_retry_on(
    make_client: Any, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """SIGTERM while a JSON request waits on its classifier: after SHUTDOWN_GRACE_SECONDS it
    answers 503 shutting_down with Retry-After and Connection: close (it used to be a connection
    cut, logged as a 503 the client never saw)."""
    gated = GatedClassifier(RulesClassifier())
    client = await make_client(classifier=gated, shutdown_grace_seconds=0.3)
    async with aiohttp.ClientSession() as session:
        pending = asyncio.ensure_future(session.post(client.make_url(path), json={"prompt": "a long wait"}))
        await asyncio.wait_for(gated.entered.wait(), 5)
        with caplog.at_level("INFO", logger="gateway.request"):
            closing = asyncio.create_task(client.server.close())
            resp = await asyncio.wait_for(pending, 5)
            body = await resp.json()
            await closing
    assert (resp.status, body["error"]) == (503, "shutting_down")
    assert resp.headers["Retry-After"] == "1" and resp.headers["Connection"] == "close"
    (line,) = [r for r in caplog.records if r.name == "gateway.request"]
    assert line.status == 503  # type: ignore[attr-defined]  # what the client saw, this time


async def test_a_body_first_waited_for_once_stopping_began_answers_503_at_once(make_client: Any) -> None:
    """A request that reaches its body only after the shutdown looked for waiting bodies (its
    auth or limits were waiting): no bytes come any more, so 503 at once, not a 408 after
    REQUEST_BODY_TIMEOUT (a reviewer measured that)."""
    client = await make_client(request_body_timeout=30)
    client.app[SHUTTING_DOWN].set()  # as end_requests sets it, with the server still reading here
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 40\r\n\r\n{\"prompt\": " % PROCESS.encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head


@pytest.mark.parametrize("path", [PROCESS, "/api/v1/enhanced/stream"])
async def test_on_shutdown_a_request_whose_body_is_still_arriving_answers_503_at_once(
    make_client: Any, path: str
) -> None:
    """Once stopping, aiohttp reads no more bytes: a body half sent at SIGTERM never arrives. Its
    request used to get no answer at all (a cut after the shutdown timeout); now a 503 it can
    retry on, without waiting out the grace."""
    client = await make_client(shutdown_grace_seconds=5)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    body = b'{"prompt": "a cat on a sofa"}'
    writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body[:10]))
    arriving = client.app[BODIES_ARRIVING]
    for _ in range(200):
        if arriving:
            break
        await asyncio.sleep(0.01)
    assert arriving, "the handler never waited for the rest of its body"
    loop = asyncio.get_running_loop()
    started = loop.time()
    closing = asyncio.create_task(client.server.close())
    answer = await asyncio.wait_for(reader.read(), 5)
    await closing
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
    assert b'"error":"shutting_down"' in payload
    assert loop.time() - started < 2  # not the 5 s grace: the body was never coming
