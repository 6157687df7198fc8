"""Command line: serve, classify one prompt, evaluate a classifier on a labeled file, manage keys."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec

from gateway import keyscli
from gateway.classifiers import open_classifier
from gateway.config import ClassifierName, ConfigError, Settings
from gateway.llm import llm_usage
from pipeline.classifiers.rules import RulesClassifier
from pipeline.evaluation import evaluate, load_examples, render_report
from pipeline.references import find_mentions
from pipeline.types import ClassifierInput

CLASSIFIERS: tuple[ClassifierName, ...] = ("rules", "local", "llm", "cascade")


def _at_least_one(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run the HTTP gateway")
    serve_cmd.add_argument("--host", help="bind address (default HOST or 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default PORT or 8000)")
    serve_cmd.add_argument(
        "--workers", type=_at_least_one, default=1,
        help="processes sharing the port with SO_REUSEPORT; from 2, a supervisor replaces "
             "one that dies (default 1)",
    )

    classify = commands.add_parser("classify", help="classify one prompt")
    classify.add_argument("prompt")
    classify.add_argument("--image", action="append", default=[], help="working image URL")
    classify.add_argument("--classifier", choices=CLASSIFIERS)
    classify.add_argument("--json", action="store_true", help="print the result as JSON")

    evaluate_cmd = commands.add_parser("eval", help="accuracy of a classifier on a JSONL file")
    evaluate_cmd.add_argument("file")
    evaluate_cmd.add_argument("--classifier", choices=CLASSIFIERS)
    evaluate_cmd.add_argument("--json", action="store_true", help="one JSON object on the last line")

    train = commands.add_parser("train", help="rebuild the embedded classifier's artifact")
    train.add_argument("--data", help="training JSONL (default data/train.jsonl)")
    train.add_argument("--out", help="artifact path (default pipeline/artifacts/local-<version>.npz)")
    train.add_argument("--if-missing", action="store_true", help="do nothing when the artifact exists")

    keyscli.add_parser(commands)
    commands.add_parser("migrate", help="apply the Postgres migrations (needs DATABASE_URL)")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if getattr(args, "classifier", None):
            settings = msgspec.structs.replace(settings, intent_classifier=args.classifier)
            settings.check()
    except ConfigError as exc:
        parser.error(str(exc))

    if args.command == "serve":
        from gateway.server import serve

        try:
            return serve(settings, host=args.host, port=args.port, workers=args.workers)
        except ConfigError as exc:  # e.g. no API keys on a public address
            parser.error(str(exc))
    if args.command == "train":
        return _train(args.data, args.out, if_missing=args.if_missing)
    if args.command == "keys":
        return asyncio.run(keyscli.run(settings, args))
    if args.command == "migrate":
        if not settings.database_url:
            parser.error("migrate needs DATABASE_URL")
        return asyncio.run(_migrate(settings.database_url))
    if args.command == "classify":
        return asyncio.run(_classify(settings, args.prompt, tuple(args.image), as_json=args.json))
    return asyncio.run(_eval(settings, args.file, as_json=args.json))


async def _migrate(url: str) -> int:
    from gateway.analytics.schema import migrate

    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    sys.stdout.write("".join(f"applied {name}\n" for name in applied) or "schema is up to date\n")
    return 0


def _train(data: str | None, out: str | None, *, if_missing: bool) -> int:
    from pipeline.classifiers.local import DEFAULT_TRAIN_FILE, build_artifact
    from pipeline.intent_model import default_artifact_path

    target = Path(out) if out else default_artifact_path()
    if if_missing and target.is_file():
        sys.stdout.write(f"{target} exists\n")
        return 0
    started = time.perf_counter()
    report = build_artifact(Path(data) if data else DEFAULT_TRAIN_FILE, target)
    sys.stdout.write(
        f"built {target} in {time.perf_counter() - started:.1f} s "
        f"(distilling the static table {report.distill_seconds:.1f} s)\n"
        f"5-fold cv on {report.n} prompts: fast tier {report.cv_accuracy_fast:.4f}, "
        f"minilm tier {report.cv_accuracy_full:.4f}, two-tier {report.cv_accuracy_cascade:.4f} "
        f"({report.cv_escalation_rate:.1%} escalated), ece {report.cv_ece:.4f}\n"
    )
    return 0


async def _classify(settings: Settings, prompt: str, images: tuple[str, ...], *, as_json: bool) -> int:
    query = ClassifierInput(prompt=prompt, working_images=images, mentions=find_mentions(prompt))
    async with open_classifier(settings) as classifier:
        result = await classifier.classify(query)
    if as_json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        sys.stdout.write(
            f"{result.workflow_type.value}  confidence={result.confidence:.2f}  "
            f"source={result.source.value}\n{result.reasoning}\n"
        )
    return 0


async def _eval(settings: Settings, path: str, *, as_json: bool) -> int:
    examples = load_examples(path)
    usage = llm_usage(settings)
    async with open_classifier(settings, usage=usage) as classifier:
        report = await evaluate(classifier, examples)
    if usage.calls or usage.fallbacks:
        # What the run cost, beside (not inside) the report: stdout's format is fixed.
        sys.stderr.write(
            f"llm: {usage.calls} calls, {usage.prompt_tokens}+{usage.completion_tokens} tokens, "
            f"~${usage.spend_usd:.6f}, {usage.fallbacks} fallbacks, "
            f"{usage.cascade_local} kept local / {usage.cascade_escalated} escalated\n"
        )
    baseline = None
    if not as_json and classifier.name != "rules":
        baseline = await evaluate(RulesClassifier(), examples)
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        sys.stdout.write(render_report(report, baseline))
    return 0
