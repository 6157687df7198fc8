"""Request bodies as they arrive, and their validation into a PipelineRequest.

Bad input stops here with a typed error; stages trust what passes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import msgspec

from gateway.errors import MalformedJSON, ValidationFailed
from pipeline.types import PipelineRequest, Preferences

MAX_PROMPT_CHARS = 2000
MAX_URL_CHARS = 2048
MAX_BODY_BYTES = 64 * 1024

# C0 controls other than tab, newline and carriage return, DEL, and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class ProcessBody(msgspec.Struct, kw_only=True):
    """The JSON body of /process, /stream and /compare (the plan's EnhancedGenerationRequest)."""

    prompt: str
    working_image_url: str | None = None
    user_preferences: Preferences | None = None
    use_ai_classification: bool = True


_decoder = msgspec.json.Decoder(ProcessBody)


def decode_body(raw: bytes) -> ProcessBody:
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:  # well-formed JSON, wrong shape: subclass of DecodeError
        raise _as_validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None


def decode_query(query: Mapping[str, str]) -> ProcessBody:
    """The GET stream's query string (for EventSource, which cannot POST)."""
    raw: dict[str, object] = {key: query[key] for key in ("prompt", "working_image_url") if key in query}
    if "use_ai_classification" in query:
        raw["use_ai_classification"] = query["use_ai_classification"]
    prefs = {key: query[key] for key in ("quality", "style", "format") if key in query}
    if prefs:
        raw["user_preferences"] = prefs
    try:
        return msgspec.convert(raw, ProcessBody, strict=False)
    except msgspec.ValidationError as exc:
        raise _as_validation_error(exc, query_string=True) from None


def _as_validation_error(exc: msgspec.ValidationError, *, query_string: bool = False) -> ValidationFailed:
    message = str(exc)
    head, sep, path = message.rpartition(" - at `$")
    field = path.rstrip("`").lstrip(".") if sep else None
    if field and query_string:
        field = field.removeprefix("user_preferences.")
    if "missing required field `prompt`" in message:
        field = "prompt"
    return ValidationFailed(head if sep else message, field=field or None)


def to_pipeline_request(body: ProcessBody, *, user_id: str, trace_id: str) -> PipelineRequest:
    prompt = body.prompt.strip()
    if not prompt:
        raise ValidationFailed("prompt must not be empty", field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValidationFailed(
            f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}", field="prompt"
        )
    if _CONTROL.search(prompt):
        raise ValidationFailed("prompt contains control characters", field="prompt")
    url = body.working_image_url.strip() if body.working_image_url else None
    if url:
        check_image_url(url)
    return PipelineRequest(
        prompt=prompt,
        user_id=user_id,
        trace_id=trace_id,
        working_image_url=url or None,
        preferences=body.user_preferences or Preferences(),
        use_ai_classification=body.use_ai_classification,
    )


def check_image_url(url: str, *, field: str = "working_image_url") -> None:
    if len(url) > MAX_URL_CHARS:
        raise ValidationFailed(f"URL is longer than {MAX_URL_CHARS} characters", field=field)
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValidationFailed("not a valid URL", field=field) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationFailed("image URL must use http or https", field=field)
    if not parts.hostname:
        raise ValidationFailed("image URL has no host", field=field)
