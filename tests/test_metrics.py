"""GET /metrics: Prometheus text from the OpenTelemetry metrics SDK."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.appkeys import METRICS
from observability.metrics import Metrics
from tests.conftest import MakeClient


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_metrics_parse_as_prometheus_text_with_histogram_buckets(client: Any) -> None:
    """After a request, /metrics parses strictly and has request and stage histograms with buckets."""
    answer = await client.post("/api/v1/enhanced/process", json={"prompt": "a cat in the garden"})
    assert answer.status == 200
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    parsed = families(await response.text())
    http = parsed["http_server_request_duration_seconds"]
    assert http.type == "histogram"
    buckets = [s for s in http.samples if s.name.endswith("_bucket")]
    routes = {s.labels["http_route"] for s in buckets}
    assert "/api/v1/enhanced/process" in routes
    assert any(s.labels["le"] == "+Inf" for s in buckets)
    assert any(s.labels["le"] == "0.005" for s in buckets)
    stages = parsed["gateway_stage_duration_seconds"]
    assert stages.type == "histogram"
    counts = {s.labels["stage"]: s.value for s in stages.samples if s.name.endswith("_count")}
    assert counts == {"context": 1, "intent": 1, "model": 1, "prompt": 1}
    assert {s.labels["outcome"] for s in stages.samples} == {"ok"}


async def test_request_and_classification_counters(client: Any) -> None:
    """Requests are counted by route and status, classifications by source."""
    await client.post("/api/v1/enhanced/process", json={"prompt": "animate this sunset"})
    await client.post("/api/v1/enhanced/process", json={"prompt": ""})
    parsed = families(await (await client.get("/metrics")).text())
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in parsed["gateway_requests"].samples}
    assert requests[("/api/v1/enhanced/process", "200")] == 1
    assert requests[("/api/v1/enhanced/process", "422")] == 1
    sources = {s.labels["source"]: s.value for s in parsed["gateway_classifications"].samples}
    assert sources == {"rules": 1}
    gauges = {s.name: s.value for s in parsed["gateway_classification_slots_in_use"].samples}
    assert gauges == {"gateway_classification_slots_in_use": 0}


async def test_embedded_classifier_runs_are_counted_by_tier(make_client: MakeClient) -> None:
    """Misses count by the tier that answered (the escalation rate sizes CPU); cache hits do not."""
    client = await make_client(intent_classifier="local")
    unsure = "something with the sky"  # the fast tier is unsure of it: MiniLM answers
    for prompt in (unsure, "change my hair to blonde with bangs", unsure):  # the second: a hit
        assert (await client.post("/api/v1/enhanced/process", json={"prompt": prompt})).status == 200
    parsed = families(await (await client.get("/metrics")).text())
    runs = {s.labels["tier"]: s.value for s in parsed["gateway_embedded_classifier_runs"].samples}
    assert runs == {"minilm": 1, "static": 1}
    snapshot = await (await client.get("/api/v1/enhanced/metrics")).json()
    assert snapshot["embedded_classifier_runs_by_tier"] == {"minilm": 1, "static": 1}
    assert snapshot["cache_hits"] == 1


async def test_other_modules_register_observable_metrics(make_client: MakeClient) -> None:
    """A gauge registered through app[METRICS] shows up with its labels at scrape time."""
    client = await make_client()
    rows = {"buffered": 3}
    client.server.app[METRICS].gauge(
        "gateway.log_rows", lambda: [(n, {"state": k}) for k, n in rows.items()], description="rows"
    )
    rows["spilled"] = 1
    parsed = families(await (await client.get("/metrics")).text())
    values = {s.labels["state"]: s.value for s in parsed["gateway_log_rows"].samples}
    assert values == {"buffered": 3, "spilled": 1}


async def test_a_scrape_says_which_service_it_is(make_client: MakeClient) -> None:
    """service.name was on every span but on no series: Prometheus' target_info carries it."""
    client = await make_client(otel_service_name="gw-eu", otel_resource_attributes="service.version=1.2")
    text = await (await client.get("/metrics")).text()
    assert 'target_info{service_version="1.2",service_name="gw-eu"} 1' in text


def test_label_values_are_escaped() -> None:
    """Quotes, backslashes and newlines in label values stay parseable."""
    metrics = Metrics()
    metrics.counter("odd", lambda: [(2, {"v": 'a"b\\c\nd'})])
    try:
        (family,) = text_string_to_metric_families(metrics.render_prometheus())
        assert family.samples[0].labels == {"v": 'a"b\\c\nd'}
        assert family.samples[0].value == 2
    finally:
        metrics.close()


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    """A value equal to a bound counts in that bucket ("le"); sum and count cover every record."""
    metrics = Metrics()
    try:
        latency = metrics.histogram("job.latency", ("queue",), unit="s", buckets=(0.1, 1.0))
        for value in (0.05, 0.1, 0.5, 3.0):
            latency.record(value, "fast")
        latency.record(0.2, "slow")
        parsed = families(metrics.render_prometheus())["job_latency_seconds"]
        fast = {(s.name, s.labels.get("le")): s.value for s in parsed.samples if s.labels["queue"] == "fast"}
        assert fast[("job_latency_seconds_bucket", "0.1")] == 2
        assert fast[("job_latency_seconds_bucket", "1.0")] == 3
        assert fast[("job_latency_seconds_bucket", "+Inf")] == 4
        assert fast[("job_latency_seconds_count", None)] == 4
        assert abs(fast[("job_latency_seconds_sum", None)] - 3.65) < 1e-9
        assert {s.labels["queue"] for s in parsed.samples} == {"fast", "slow"}
        with pytest.raises(ValueError, match="takes labels"):
            latency.record(1.0, "fast", "extra")
    finally:
        metrics.close()
