"""The embedded intent classifier: offline, in-process, no API key.

A thin `Classifier` over `pipeline.intent_model.IntentModel`. Confidence is the
temperature-calibrated probability of the chosen workflow; under
``low_confidence_below`` the result carries ``metadata["low_confidence"] = True``
so the cascade can escalate it to the LLM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from pipeline.classifiers.rules import default_workflow, look_search_query, named_looks
from pipeline.encoder import MiniLMEncoder, SentenceEncoder
from pipeline.enhance import is_short
from pipeline.group_commit import GroupCommit
from pipeline.intent_model import (
    ARTIFACT_VERSION,
    DEFAULT_ESCALATE_BELOW,
    FastTier,
    IntentExample,
    IntentModel,
    TrainReport,
    default_artifact_path,
    load_examples,
    train_model,
)
from pipeline.types import (
    LABELS,
    NO_CLEAR_INTENT,
    ClassifierInput,
    IntentClassification,
    IntentSource,
    MiniLMRuntime,
    WorkflowType,
)

__all__ = ["DEFAULT_TRAIN_FILE", "LocalClassifier", "build_artifact", "to_example"]

log = logging.getLogger(__name__)

DEFAULT_TRAIN_FILE = Path(__file__).resolve().parents[2] / "data" / "train.jsonl"
DEFAULT_LOW_CONFIDENCE = 0.6
# A float32 batch of 8 costs ~2.8 ms per prompt against ~4.4 ms alone on ONNX Runtime (4.2 vs 9
# on NumPy); more gains little and makes the first escalation in it wait for all the others. int8
# runs a batch's prompts one by one (~1.5 ms each; see `OnnxMiniLMEncoder.encode_token_ids`):
# there a batch saves only thread hops.
TRANSFORMER_BATCH = 8
TRANSFORMER_NICE = 19  # how much nicer than the event loop its thread runs (see below)
TRANSFORMER_TIMEOUT = 2.0  # seconds an escalation may wait for MiniLM (a batch takes ~5-50 ms)
# An escalation that would queue longer than this for MiniLM gets the fast tier's answer (see
# `_minilm_busy`). The load-testing targets ask for `done` p99 <= 50 ms; MiniLM's queue is the tail.
DEFAULT_ESCALATION_BUDGET = 0.025  # seconds
_EWMA = 0.2  # weight of the newest batch in the MiniLM time-per-prompt estimate
# Which tier answered: the fast one (sure of itself, or MiniLM too busy to ask) or MiniLM.
Tier = Literal["static", "static_busy", "minilm"]
_TIER_NAMES: dict[Tier, str] = {
    "static": "static tier", "static_busy": "static tier, MiniLM busy", "minilm": "minilm tier",
}
# At most this many queries wait between `quick_answer` and `classify` (a slot each, so ~8; more
# are requests that ended or joined another's classification in between).
_UNDECIDED_KEPT = 256
# Fast tiers computed in one call at most: at saturation 64 streams of misses brought ~18 to one
# loop turn (1-49); the cost per prompt stops falling long before this.
FAST_BATCH = 64


def build_artifact(train_file: Path = DEFAULT_TRAIN_FILE, out: Path | None = None) -> TrainReport:
    """Train on ``train_file`` and write the artifact; returns the training report."""
    out = out or default_artifact_path()
    model, report = train_model(load_examples(train_file), LABELS)
    model.save(out)
    log.info("built %s in %.1f s (distill %.1f s): cv accuracy %.4f, escalation %.3f, ece %.4f",
             out, report.seconds, report.distill_seconds, report.cv_accuracy_cascade,
             report.cv_escalation_rate, report.cv_ece)
    return report


class LocalClassifier:
    """all-MiniLM-L6-v2 + static embeddings + TF-IDF + context, two-tier head.

    `runs` counts classifications by the tier that answered ("static", "minilm", or
    "static_busy": MiniLM was wanted but its queue was over `escalation_budget` seconds); pass
    the app's counter to publish them (the escalation rate sizes an instance's CPU for misses).
    """

    name = "local"

    def __init__(self, model: IntentModel, *, low_confidence_below: float = DEFAULT_LOW_CONFIDENCE,
                 escalate_below: float | None = None, runs: Counter[str] | None = None,
                 transformer_timeout: float = TRANSFORMER_TIMEOUT,
                 escalation_budget: float = DEFAULT_ESCALATION_BUDGET) -> None:
        self.model = model
        self.runs: Counter[str] = runs if runs is not None else Counter()
        self.transformer_timeout = transformer_timeout
        self.escalation_budget = escalation_budget
        self._escalating = 0  # escalations queued for or inside MiniLM
        self._seconds_per_escalation = 0.0  # MiniLM's recent wall time per prompt, as the loop sees it
        self._running: tuple[float, int] | None = None  # the running batch: perf_counter() at start, size
        # Queries `quick_answer` left to `classify`, by id() (the query is kept, so the id stays its own).
        self._undecided: dict[int, tuple[ClassifierInput, FastTier]] = {}
        self.low_confidence_below = low_confidence_below
        meta_escalate = model.meta.get("escalate_below", DEFAULT_ESCALATE_BELOW)
        self.escalate_below = float(escalate_below if escalate_below is not None
                                    else meta_escalate)  # type: ignore[arg-type]
        # The threshold and int8 weights change answers, so they are part of the version (and
        # the cache key); float32 on NumPy or ONNX Runtime agree to 1e-7 and share one.
        precision = "" if model.encoder.precision == "float32" else f"-{model.encoder.precision}"
        self.version = f"local-{ARTIFACT_VERSION}-{model.fingerprint}-e{self.escalate_below:g}{precision}"
        # The probability columns: one per workflow, and the "no clear request" label's (absent
        # from artifacts built before it).
        self._workflows = {i: WorkflowType(label) for i, label in enumerate(model.labels)
                           if label != NO_CLEAR_INTENT}
        self._columns = {workflow: i for i, workflow in self._workflows.items()}
        labels = list(model.labels)
        self._unclear_column = labels.index(NO_CLEAR_INTENT) if NO_CLEAR_INTENT in labels else None
        self._thread: ThreadPoolExecutor | None = None
        self._closed = False
        self._transformer: GroupCommit[list[int], npt.NDArray[np.float32]] = GroupCommit(
            self._embed, max_batch=TRANSFORMER_BATCH)
        self._fast: GroupCommit[IntentExample, FastTier] = GroupCommit(self._fast_tiers, max_batch=FAST_BATCH)

    @classmethod
    def load(cls, path: Path | None = None, *, build_if_missing: bool = False,
             low_confidence_below: float = DEFAULT_LOW_CONFIDENCE,
             escalate_below: float | None = None, runtime: MiniLMRuntime = "onnx-int8",
             runs: Counter[str] | None = None,
             escalation_budget: float = DEFAULT_ESCALATION_BUDGET) -> LocalClassifier:
        """Load the artifact (building it first if asked and absent: the first start).

        `runtime` runs MiniLM on ONNX Runtime with 8-bit weights (a third of float32's time per
        escalation, answers as accurate: see `pipeline.encoder_onnx`), on ONNX Runtime in float32
        (half NumPy's time) or on NumPy (the reference).
        """
        path = path or default_artifact_path()
        if not path.is_file():
            if not build_if_missing:
                raise FileNotFoundError(f"{path} is missing: run `python -m gateway train`")
            log.warning("intent artifact %s missing: training it now (about 2 minutes)", path)
            build_artifact(out=path)
        started = time.perf_counter()
        reference = MiniLMEncoder()
        encoder: SentenceEncoder = reference
        if runtime != "numpy":
            # Imported here: onnxruntime costs start-up time only when used.
            from pipeline.encoder_onnx import OnnxMiniLMEncoder

            encoder = OnnxMiniLMEncoder(reference, int8=runtime == "onnx-int8")
        model = IntentModel.load(path, encoder)
        classifier = cls(model, low_confidence_below=low_confidence_below, escalate_below=escalate_below,
                         runs=runs, escalation_budget=escalation_budget)
        classifier.time_minilm()
        log.info("loaded %s (MiniLM on %s, %.1f ms a prompt) in %.2f s", path.name, runtime,
                 classifier._seconds_per_escalation * 1000, time.perf_counter() - started)
        return classifier

    def time_minilm(self) -> None:
        """Start MiniLM's time-per-prompt estimate from a measured run instead of from zero.

        With no estimate yet, no queue looks long: a cold instance's first burst of escalations
        all queued for MiniLM. The first run also pays the runtime's one-time set-up here rather
        than in a request. The deadline, meant for a stuck thread, is raised where ten full
        batches at the measured pace would not fit in it (under valgrind, ~1 s a prompt).
        """
        ids = self.model.predict_fast(IntentExample.from_prompt("a photo of waves at sunset")).token_ids
        encode = self.model.encoder.encode_token_ids
        encode([ids])
        started = time.perf_counter()
        encode([ids])
        self._seconds_per_escalation = per_prompt = time.perf_counter() - started
        self.transformer_timeout = max(self.transformer_timeout, 10 * TRANSFORMER_BATCH * per_prompt)

    async def quick_answer(self, query: ClassifierInput) -> IntentClassification | None:
        # The fast tier (~0.1 ms a prompt) runs on the event loop, cheaper than a thread hop, for
        # all the queries that ask in one loop turn at once (see `IntentModel.predict_fast_many`).
        fast = await self._fast(to_example(query))
        tier = self._tier_without_minilm(fast)
        # An answer flagged low (under the line when MiniLM is busy, or nothing asked) is not
        # final: the cascade's `classify` takes it to the LLM. Given here, the cascade would ask
        # again and it would count twice.
        if tier is None or self._flagged_low(fast.probs):
            # `classify(query)` follows: it takes this fast tier instead of computing it again.
            if len(self._undecided) >= _UNDECIDED_KEPT:  # callers that never followed up
                self._undecided.clear()
            self._undecided[id(query)] = (query, fast)
            return None
        return self._result(query, fast.probs, tier=tier)

    async def _fast_tiers(self, examples: list[IntentExample]) -> list[FastTier]:
        return self.model.predict_fast_many(examples)

    async def classify(self, query: ClassifierInput) -> IntentClassification:
        # The transformer (~2 ms) would stall every other stream on this event loop, so it
        # runs on the classifier's own thread, and escalations that queue while it is busy go
        # as one batch. A deadline bounds the wait: past it, the fast tier's answer stands
        # (as when MiniLM is busy), so a stuck or starved thread costs accuracy, not the slot.
        fast = self._fast_tier(query)
        if (tier := self._tier_without_minilm(fast)) is not None:
            return self._result(query, fast.probs, tier=tier)
        self._escalating += 1
        try:
            async with asyncio.timeout(self.transformer_timeout):
                embedding = await self._transformer(fast.token_ids)
        except TimeoutError:
            return self._result(query, fast.probs, tier="static_busy")
        finally:
            self._escalating -= 1
        return self._result(query, self.model.predict_full(fast, embedding), tier="minilm")

    def _fast_tier(self, query: ClassifierInput) -> FastTier:
        """The fast tier of `query`: the one `quick_answer` computed for this very object, if any."""
        undecided = self._undecided.pop(id(query), None)
        if undecided is not None and undecided[0] is query:
            return undecided[1]
        return self.model.predict_fast(to_example(query))

    def _tier_without_minilm(self, fast: FastTier) -> Tier | None:
        """The tier that answers without MiniLM: "static" if the fast tier is sure, "static_busy"
        if MiniLM is too busy to ask; None: ask MiniLM."""
        if fast.confident(self.escalate_below):
            return "static"
        return "static_busy" if self._minilm_busy() else None

    def _minilm_busy(self) -> bool:
        """Whether a new escalation would wait longer than the budget for MiniLM.

        Under load MiniLM's queue grew faster than it drained (one core, a thread the loop has
        priority over): escalations waited 0.6-1 s at p95 on a slow VM. Past the budget the fast
        tier's answer stands, marked provisional so it is not cached. An idle MiniLM always runs.
        The running batch's overrun (how much longer it has taken than the estimate says it
        should) is added: a stalled thread would otherwise look as fast as its last batch.
        """
        per_prompt = self._seconds_per_escalation
        wait = self._escalating * per_prompt
        if self._running is not None:
            started, size = self._running
            wait += max(0.0, time.perf_counter() - started - size * per_prompt)
        return wait > self.escalation_budget

    async def _embed(self, batch: list[list[int]]) -> list[npt.NDArray[np.float32]]:
        if self._closed:  # an error, so the stage falls back to the rules
            raise RuntimeError("the embedded classifier is closed")
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm",
                                              initializer=_yield_to_the_event_loop)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._running = (started, len(batch))
        embed = self.model.encoder.encode_token_ids
        try:
            embeddings = list(await loop.run_in_executor(self._thread, embed, batch))
        finally:
            self._running = None
        # Wall time, not the thread's CPU time: what a queued escalation waits includes the
        # loop's share of the core and the thread hops.
        per_prompt = (time.perf_counter() - started) / len(batch)
        last = self._seconds_per_escalation
        self._seconds_per_escalation = per_prompt if last == 0 else last + _EWMA * (per_prompt - last)
        return embeddings

    def close(self) -> None:
        """Stop the transformer's thread (a classifier that never escalated has none).

        A batch already handed over still runs (cancelling it would reach its callers as a
        cancellation, not an error they can fall back from); escalations after this fail (or,
        while MiniLM counts as busy, get the fast tier's answer).
        """
        self._closed = True
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    def classify_sync(self, query: ClassifierInput) -> IntentClassification:
        probs, escalated = self.model.predict_one(to_example(query), escalate_below=self.escalate_below)
        return self._result(query, probs, tier="minilm" if escalated else "static")

    def predict_proba(self, queries: Sequence[ClassifierInput]) -> npt.NDArray[np.float32]:
        """Batch probabilities, columns in the order of the artifact's labels."""
        probs, _ = self.model.predict_proba([to_example(q) for q in queries],
                                            escalate_below=self.escalate_below)
        return probs

    def _unclear(self, p: list[float]) -> float:
        """The probability that the prompt asks for nothing (0 from artifacts without the label)."""
        return p[self._unclear_column] if self._unclear_column is not None else 0.0

    def _flagged_low(self, p: list[float]) -> bool:
        """Whether `_result` flags these probabilities low_confidence: the best is under the line,
        or the best is "nothing asked"."""
        best = max(p)
        return best < self.low_confidence_below or self._unclear(p) == best

    def _result(self, query: ClassifierInput, p: list[float], *, tier: Tier) -> IntentClassification:
        self.runs[tier] += 1
        order = sorted(self._workflows, key=p.__getitem__, reverse=True)  # workflow columns only
        unclear = self._unclear(p)
        nothing_asked = unclear >= p[order[0]]  # as `_flagged_low` decides
        others = order[1:3]
        if nothing_asked:
            # The rules' safe default, with the model's probability that it is what was meant
            # as its confidence, and flagged low so the cascade asks the LLM.
            workflow = default_workflow(query.has_image)
            confidence = p[self._columns[workflow]]
            others = [i for i in order if self._workflows[i] is not workflow][:2]
            said = f"no clear request (p={unclear:.2f}), so the default {workflow.value}"
        else:
            workflow, confidence = self._workflows[order[0]], p[order[0]]
            said = (f"{workflow.value} p={confidence:.2f}, "
                    f"next {self._workflows[others[0]].value} p={p[others[0]]:.2f}")
        # Celebrity/event looks need reference images: the same names the rules search for.
        looks = named_looks(query.prompt) if workflow is WorkflowType.REFERENCE_STYLING else []
        metadata: dict[str, Any] = {
            "low_confidence": nothing_asked or confidence < self.low_confidence_below,
            "tier": tier,
            "alternatives": {self._workflows[i]._value_: round(p[i], 4) for i in others},
        }
        if nothing_asked:
            metadata["no_clear_intent"] = True
        if tier == "static_busy":
            metadata["provisional"] = True  # never cached (pipeline/cache.py)
        return IntentClassification(
            workflow_type=workflow,
            confidence=round(confidence, 4),
            reasoning=f"embedded classifier ({_TIER_NAMES[tier]}): {said}",
            source=IntentSource.LOCAL,
            requires_web_search=bool(looks),
            web_search_query=look_search_query(query.prompt, looks) if looks else None,
            enhancement_needed=is_short(query.prompt),
            metadata=metadata,
        )


def _yield_to_the_event_loop() -> None:
    """Run the transformer's thread at the lowest priority (nice 19): the event loop first.

    Where both share a core (one pinned process; as many workers as cores), the kernel would
    split it evenly while MiniLM runs, halving the loop's speed for every other stream. Niced,
    the loop wins the core when it has work and the thread gets all the idle time, plus a
    share while the loop is saturated: ~10% of the core at nice 10, ~1.5% at 19. That share is
    taken from every other stream, and past the queue budget the fast tier answers anyway, so
    it runs at 19; a batch it starves past the deadline gets the fast tier's answer.
    Measured on the pinned server: half repeated prompts at 800 req/s, TTFE p99 14-20 ms at
    equal priority, 4.4-5.2 ms at +10; 64 streams of misses, saturated, 3,799-3,899 req/s at
    +10 and 4,280-4,402 at 19 (`done` p99 31-36 -> 22-23 ms), with TTFE and `done` p99 alike at
    2,500-2,800 req/s. Linux only: there a thread has its own nice value; elsewhere
    `setpriority` would lower the whole process.
    """
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread,
                       min(19, os.getpriority(os.PRIO_PROCESS, thread) + TRANSFORMER_NICE))
    except OSError as exc:  # a sandbox that forbids it: run at the loop's priority
        log.warning("could not lower the MiniLM thread's priority: %s", exc)


def to_example(query: ClassifierInput) -> IntentExample:
    return IntentExample.from_prompt(
        query.prompt, working_images=len(query.working_images),
        uploaded_images=len(query.uploaded_images), mentions=len(query.mentions),
    )
