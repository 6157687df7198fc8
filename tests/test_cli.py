"""The command line: classify and eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main


def test_classify_prints_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["classify", "animate this sunset", "--image", "https://a.supabase.co/s.jpg", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["workflow_type"] == "image_to_video"


def test_eval_json_reports_the_documented_fields(tmp_path: Path) -> None:
    """`python -m gateway eval FILE --classifier rules --json`: one JSON object on the last line."""
    data = tmp_path / "mini.jsonl"
    rows = [
        {"prompt": "change my hair to red", "workflow": "hair_styling"},
        {"prompt": "animate this", "working_images": ["https://a.supabase.co/x.jpg"], "workflow": "image_to_video"},
        {"prompt": "a quiet lake", "workflow": "text_to_video"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "eval", str(data), "--classifier", "rules", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["n"] == 3 and report["classifier"] == "rules"
    assert report["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert report["per_class"]["text_to_video"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "n": 1}
    assert report["confusion"]["text_to_video"] == {"image_generation": 1}
    assert set(report["latency_ms"]) == {"p50", "p95"}
    assert {"macro_f1", "ece"} <= set(report)


def test_eval_takes_uploaded_images_as_the_training_files_say_them(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An upload is an image in hand: "make a video of this" is image_to_video with one, as the
    eval file says, and text_to_video without (the file was refused: an unknown field)."""
    data = tmp_path / "uploads.jsonl"
    upload = {"uploaded_images": ["https://a.supabase.co/x.jpg"]}
    rows = [{"prompt": "make a video of this", "workflow": "image_to_video", **upload},
            {"prompt": "make a video of this", "workflow": "image_to_video"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["eval", str(data), "--classifier", "rules", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["confusion"]["image_to_video"] == {"image_to_video": 1, "text_to_video": 1}


def test_eval_table_is_readable(tmp_path: Path) -> None:
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": "upscale this", "workflow": "image_enhancement"}) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "eval", str(data), "--classifier", "rules"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "image_enhancement" in out and "accuracy=1.0000" in out
