#!/usr/bin/env python3
"""5-fold CV accuracy of the embedded classifier at several escalation thresholds.

Out-of-fold predictions on data/train.jsonl, built the way `gateway train` builds its report
(same features, same temperature calibration), so the threshold can be chosen without looking
at the dev set. Prints one line per threshold: CV accuracy and the share escalated to MiniLM.

    python scripts/escalation_cv.py                    # about a minute on one core
    python scripts/escalation_cv.py --thresholds 0.7 0.8
    python scripts/escalation_cv.py --runtime onnx-int8  # heads trained on float, scored on int8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import intent_model as im
from pipeline.encoder import MiniLMEncoder, StaticEncoder
from pipeline.types import LABELS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/train.jsonl"))
    parser.add_argument("--thresholds", type=float, nargs="*",
                        default=[0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.01])
    parser.add_argument("--runtime", choices=("numpy", "onnx-int8"), default="numpy",
                        help="what embeds the scored rows: the float reference, or int8 MiniLM as the "
                             "gateway serves it (the heads are float-trained either way, like the artifact)")
    args = parser.parse_args()

    examples = im.load_examples(args.data)
    labels = list(LABELS)
    y = np.array([labels.index(str(e.label)) for e in examples])
    encoder = MiniLMEncoder()
    # The same float16 rounding of the distilled table as the served artifact.
    table = im._static_table(encoder).astype(np.float16).astype(np.float32)
    static = StaticEncoder(table, encoder.tokenizer)
    texts = [e.prompt for e in examples]
    tfidf = im.Tfidf.fit(texts)
    fast = np.hstack([static.encode_batch_ids(encoder.token_ids(texts)),
                      np.stack([im._context(e) for e in examples])])
    x_fast = im._Design(fast, texts, tfidf)
    x_full = im._Design(np.hstack([encoder.encode(texts), fast]), texts, tfidf)
    scored = x_full
    if args.runtime == "onnx-int8":
        from pipeline.encoder_onnx import OnnxMiniLMEncoder

        int8 = OnnxMiniLMEncoder(encoder, int8=True)
        scored = im._Design(np.hstack([int8.encode(texts), fast]), texts, tfidf)
    logits_fast = im._cv_logits(x_fast, y, len(labels))
    logits_full = im._cv_logits(x_full, y, len(labels))
    p_fast = im._softmax(logits_fast / im._fit_temperature(logits_fast, y))
    logits_scored = logits_full if scored is x_full else im._cv_logits(x_full, y, len(labels), scored=scored)
    # The temperature is fitted on the float logits, as `gateway train` does.
    p_full = im._softmax(logits_scored / im._fit_temperature(logits_full, y))
    for threshold in args.thresholds:
        escalated = p_fast.max(axis=1) < threshold
        predicted = np.where(escalated[:, None], p_full, p_fast).argmax(axis=1)
        print(f"escalate below {threshold:<5g} cv accuracy {(predicted == y).mean():.4f}  "
              f"escalated {escalated.mean():.1%}")


if __name__ == "__main__":
    main()
