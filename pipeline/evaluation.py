"""Accuracy, per-class precision/recall/F1, confusion, calibration and latency of a classifier."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from pipeline.protocols import Classifier
from pipeline.references import find_mentions
from pipeline.types import LABELS, NO_CLEAR_INTENT, ClassifierInput, IntentClassification


class Example(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of an eval file."""

    prompt: str
    workflow: str  # one of LABELS: a workflow, or that the prompt asks for nothing
    working_images: list[str] = []
    uploaded_images: list[str] = []  # as the training files say them (`IntentExample`)

    def __post_init__(self) -> None:
        if self.workflow not in LABELS:
            raise ValueError(f"workflow {self.workflow!r} is not one of {', '.join(LABELS)}")


class ClassScores(msgspec.Struct):
    precision: float
    recall: float
    f1: float
    n: int


class Latency(msgspec.Struct):
    p50: float
    p95: float


class Report(msgspec.Struct):
    classifier: str
    n: int
    accuracy: float
    macro_f1: float
    ece: float | None  # expected calibration error over 10 confidence bins; None: no workflow expected
    per_class: dict[str, ClassScores]
    confusion: dict[str, dict[str, int]]  # expected -> predicted -> count
    latency_ms: Latency


def load_examples(path: str | Path) -> list[Example]:
    decoder = msgspec.json.Decoder(Example)
    lines = Path(path).read_text("utf-8").splitlines()
    examples = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                examples.append(decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return examples


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def evaluate(classifier: Classifier, examples: list[Example]) -> Report:
    predictions: list[tuple[str, str, float]] = []
    latencies: list[float] = []
    for example in examples:
        query = ClassifierInput(
            prompt=example.prompt,
            working_images=tuple(example.working_images),
            uploaded_images=tuple(example.uploaded_images),
            mentions=find_mentions(example.prompt),
        )
        started = time.perf_counter()
        result = await classifier.classify(query)
        latencies.append((time.perf_counter() - started) * 1000)
        predictions.append((example.workflow, _label(result), result.confidence))
    return _score(classifier.name, predictions, latencies)


def _label(result: IntentClassification) -> str:
    """What the classifier said: a workflow, or (with its default workflow) that nothing was asked."""
    return NO_CLEAR_INTENT if result.no_clear_intent else result.workflow_type.value


def _score(name: str, predictions: list[tuple[str, str, float]], latencies: list[float]) -> Report:
    n = len(predictions)
    confusion = {e: {p: 0 for p in LABELS} for e in LABELS}
    for expected, predicted, _ in predictions:
        confusion[expected][predicted] += 1
    per_class = {}
    for label in LABELS:
        tp = confusion[label][label]
        support = sum(confusion[label].values())
        predicted_as = sum(row[label] for row in confusion.values())
        precision = tp / predicted_as if predicted_as else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = ClassScores(round(precision, 4), round(recall, 4), round(f1, 4), support)
    present = [scores for scores in per_class.values() if scores.n]
    correct = sum(expected == predicted for expected, predicted, _ in predictions)
    return Report(
        classifier=name,
        n=n,
        accuracy=round(correct / n, 4) if n else 0.0,
        macro_f1=round(sum(s.f1 for s in present) / len(present), 4) if present else 0.0,
        ece=_ece(predictions),
        per_class=per_class,
        confusion={e: {p: c for p, c in row.items() if c} for e, row in confusion.items()},
        latency_ms=Latency(
            p50=round(percentile(latencies, 50), 4) if latencies else 0.0,
            p95=round(percentile(latencies, 95), 4) if latencies else 0.0,
        ),
    )


def _ece(predictions: list[tuple[str, str, float]], bins: int = 10) -> float | None:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size.

    Over the examples that expect a workflow: for a prompt that asks nothing, the confidence
    is the default workflow's, which no answer makes right.
    """
    predictions = [prediction for prediction in predictions if prediction[0] != NO_CLEAR_INTENT]
    if not predictions:
        return None
    buckets: list[list[tuple[bool, float]]] = [[] for _ in range(bins)]
    for expected, predicted, confidence in predictions:
        buckets[min(bins - 1, int(confidence * bins))].append((expected == predicted, confidence))
    total = 0.0
    for bucket in buckets:
        if bucket:
            accuracy = sum(ok for ok, _ in bucket) / len(bucket)
            confidence = sum(c for _, c in bucket) / len(bucket)
            total += len(bucket) * abs(accuracy - confidence)
    return round(total / len(predictions), 4)


def render_report(report: Report, baseline: Report | None = None) -> str:
    """A readable table, with the rule baseline beside it when given."""
    head = f"{'workflow':<20}{'n':>5}{'prec':>8}{'recall':>8}{'f1':>8}"
    if baseline:
        head += f"{'rules f1':>10}"
    lines = [f"classifier: {report.classifier}", head, "-" * len(head)]
    predicted = {label for row in report.confusion.values() for label in row}
    for label, scores in report.per_class.items():
        if not scores.n and label not in predicted:
            continue  # neither expected nor said: a row of zeros (most files expect no `unclear`)
        line = f"{label:<20}{scores.n:>5}{scores.precision:>8.3f}{scores.recall:>8.3f}{scores.f1:>8.3f}"
        if baseline:
            line += f"{baseline.per_class[label].f1:>10.3f}"
        lines.append(line)
    lines.append("-" * len(head))
    ece = "n/a" if report.ece is None else f"{report.ece:.4f}"
    summary = (
        f"n={report.n}  accuracy={report.accuracy:.4f}  macro_f1={report.macro_f1:.4f}  "
        f"ece={ece}  latency p50={report.latency_ms.p50:.3f} ms  "
        f"p95={report.latency_ms.p95:.3f} ms"
    )
    lines.append(summary)
    if baseline:
        lines.append(f"rules baseline: accuracy={baseline.accuracy:.4f}  macro_f1={baseline.macro_f1:.4f}")
    return "\n".join(lines) + "\n"
