"""Benchmark the embedded classifier: load time, resident memory added, single-prompt latency.

    .venv/bin/python scripts/bench_classifier.py [--file data/dev.jsonl] [--passes 5] [--blas-threads 1]
        [--escalate-below 0.8]

Latency is uncached: every call runs the model on one prompt (no batching, no
intent cache). Prints p50/p95/p99 overall and per tier (static-only vs MiniLM
escalation), the escalation rate, load time, and RSS before/after loading.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--file", default=str(ROOT / "data" / "dev.jsonl"))
    parser.add_argument("--passes", type=int, default=5, help="times over the file (default 5)")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads, set before numpy loads (default 1, as `python -m gateway`)")
    parser.add_argument("--escalate-below", type=float, help="override the artifact's escalation threshold")
    parser.add_argument("--runtime", choices=("onnx-int8", "onnx", "numpy"), default="onnx-int8",
                        help="what runs MiniLM (LOCAL_RUNTIME; default onnx-int8)")
    args = parser.parse_args()
    if args.blas_threads > 0:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)
    sys.path.insert(0, str(ROOT))

    # Imports first, so the RSS delta is the model, not the libraries.
    import numpy  # noqa: F401
    import tokenizers  # noqa: F401

    if args.runtime != "numpy":
        import onnxruntime  # noqa: F401

    from pipeline.classifiers.local import LocalClassifier
    from pipeline.evaluation import load_examples
    from pipeline.references import find_mentions
    from pipeline.types import ClassifierInput

    before = rss_mb()
    started = time.perf_counter()
    classifier = LocalClassifier.load(runtime=args.runtime)
    load_s = time.perf_counter() - started
    if args.escalate_below is not None:
        classifier.escalate_below = args.escalate_below
    queries = [
        ClassifierInput(prompt=e.prompt, working_images=tuple(e.working_images),
                        mentions=find_mentions(e.prompt))
        for e in load_examples(args.file)
    ]
    for q in queries[:20]:  # warm-up: first calls touch cold pages
        classifier.classify_sync(q)
    after = rss_mb()

    all_ms: list[float] = []
    by_tier: dict[str, list[float]] = {"static": [], "minilm": []}
    for _ in range(args.passes):
        for q in queries:
            t0 = time.perf_counter()
            result = classifier.classify_sync(q)
            ms = (time.perf_counter() - t0) * 1000
            all_ms.append(ms)
            by_tier[result.metadata["tier"]].append(ms)

    out = sys.stdout.write
    out(f"file: {args.file}  prompts: {len(queries)}  calls: {len(all_ms)}  "
        f"escalate_below: {classifier.escalate_below}  cpus: {os.cpu_count()}  "
        f"loadavg: {os.getloadavg()[0]:.1f}\n")
    out(f"load: {load_s:.2f} s   rss: {before:.0f} MB -> {after:.0f} MB (+{after - before:.0f} MB)\n")
    out(f"latency ms  p50={pct(all_ms, 50):.3f}  p95={pct(all_ms, 95):.3f}  p99={pct(all_ms, 99):.3f}\n")
    for tier, values in by_tier.items():
        if values:
            out(f"  {tier:<7} {len(values) / len(all_ms):6.1%} of calls  p50={pct(values, 50):.3f}  "
                f"p95={pct(values, 95):.3f}  p99={pct(values, 99):.3f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
