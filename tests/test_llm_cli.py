"""`python -m gateway eval --classifier llm|cascade` against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    {"prompt": "give me a pixie cut", "workflow": "hair_styling"},
    {"prompt": "a lighthouse in a storm", "workflow": "image_generation"},
    {"prompt": "make my hair blonde", "workflow": "hair_styling"},
]


def fake_openai() -> tuple[web.Application, list[dict[str, Any]]]:
    """A minimal Chat Completions server, like a local vLLM/Ollama/llama.cpp would be."""
    seen: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        data = msgspec.json.decode(body["messages"][1]["content"].split("\n")[1])
        hair = "cut" in data["prompt"] or "hair" in data["prompt"]
        workflow = "hair_styling" if hair else "image_generation"
        content = {
            "workflow_type": workflow, "confidence": 0.9, "reasoning": "fake", "requires_web_search": False,
            "web_search_query": None, "enhancement_needed": False,
        }
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(content)}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        })  # fmt: skip

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app, seen


async def run_eval(base_url: str, data: Path, classifier: str) -> tuple[dict[str, Any], str]:
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_MODEL": "qwen2.5:0.5b"}
    env.pop("OPENAI_API_KEY", None)  # local servers need none
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "eval", str(data), "--classifier", classifier, "--json",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1]), err.decode()


async def test_eval_llm_and_cascade_against_a_local_server(aiohttp_server: Any, tmp_path: Path) -> None:
    """eval talks to whatever OPENAI_BASE_URL names; the cascade asks only about unsure prompts."""
    app, seen = fake_openai()
    server = await aiohttp_server(app)
    data = tmp_path / "mini.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    base_url = str(server.make_url("/v1"))

    report, err = await run_eval(base_url, data, "llm")
    assert report["classifier"] == "llm" and report["n"] == 3
    assert report["accuracy"] == 1.0
    assert len(seen) == 3 and seen[0]["model"] == "qwen2.5:0.5b"
    assert seen[0]["response_format"]["json_schema"]["strict"] is True
    assert "llm: 3 calls, 300+60 tokens" in err

    report, err = await run_eval(base_url, data, "cascade")
    assert report["classifier"] == "cascade" and report["accuracy"] == 1.0
    # The embedded classifier, first in the cascade, is sure of all three: no LLM call
    # (test_llm_app.py covers escalation of an unsure prompt).
    assert len(seen) == 3
