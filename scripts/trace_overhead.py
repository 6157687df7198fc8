#!/usr/bin/env python3
"""Rough CPU cost of tracing and metrics per request, in one process (client and server).

Builds the real app four ways: telemetry off, metrics only, tracing only (every request
sampled), both; sends the same SSE requests to each through an in-process client and reports
CPU microseconds per request (the minimum over rounds, to shed noise from other processes).
The client's share is in every figure, so the differences are what telemetry adds.

    python scripts/trace_overhead.py            # 5 rounds of 1500 requests
    python scripts/trace_overhead.py -n 3000 -r 7
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import create_app
from gateway.appkeys import METRICS, STAGE_INSTRUMENTS
from gateway.config import Settings


class _NoRecord:
    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {
    # name: (histograms off, settings overrides)
    "nothing": (True, {"otel_sdk_disabled": True}),
    "metrics": (False, {"otel_sdk_disabled": True}),
    "tracing": (True, {"otel_traces_sampler": "always_on"}),
    "both": (False, {"otel_traces_sampler": "always_on"}),
}


async def cpu_per_request(requests: int, no_histograms: bool, overrides: dict[str, Any]) -> float:
    settings = msgspec.structs.replace(Settings.from_env({}), log_level="WARNING", **overrides)
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        if no_histograms:  # metrics off: the two per-request histograms record nothing
            app[METRICS].http_duration = _NoRecord()  # type: ignore[assignment]
            app[STAGE_INSTRUMENTS].duration = _NoRecord()  # type: ignore[assignment]
        for i in range(max(100, requests // 5)):  # warm-up
            await (await client.post("/api/v1/enhanced/stream", json={"prompt": f"a cat {i % 7}"})).read()
        started = time.process_time()
        for i in range(requests):
            await (await client.post("/api/v1/enhanced/stream", json={"prompt": f"a cat {i % 7}"})).read()
        return (time.process_time() - started) / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--requests", type=int, default=1500)
    parser.add_argument("-r", "--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (no_histograms, overrides) in VARIANTS.items():
            results[name].append(await cpu_per_request(args.requests, no_histograms, overrides))
    base = min(results["nothing"])
    for name, values in results.items():
        best = min(values)
        sys.stdout.write(f"{name:8s} {best:8.1f} us/request  {100 * (best - base) / base:+6.1f}%\n")


if __name__ == "__main__":
    asyncio.run(main())
