"""Request bodies as they arrive, and their validation into a PipelineRequest.

Bad input stops here with a typed error; stages trust what passes.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, TypeVar, get_args, overload

import msgspec

from gateway.errors import (
    CONTENT_CODINGS,
    MalformedJSON,
    MalformedQuery,
    UnsupportedContentEncoding,
    UnsupportedMediaType,
    ValidationFailed,
)
from gateway.prompttext import clean_prompt
from gateway.urlpolicy import ImageUrlPolicy, UrlPolicy
from pipeline.types import Format, PipelineRequest, Preferences, Quality, Style

MAX_BODY_BYTES = 64 * 1024
MAX_UPLOADED_IMAGES = 10


# A preference as sent is at most 50 characters (the app plan cut values there).
QualityText = Annotated[str, msgspec.Meta(description=f"one of {', '.join(get_args(Quality))}, in any case")]
StyleText = Annotated[str, msgspec.Meta(
    max_length=50, description=f"one of {', '.join(get_args(Style))}, in any case, with spaces or hyphens "
    "for underscores; or an alias such as photo, oil, pencil, 3d"
)]  # fmt: skip
FormatText = Annotated[str, msgspec.Meta(
    max_length=50, description=f"one of {', '.join(get_args(Format))}; vertical or horizontal; or a "
    "width x height that reduces to one of the ratios, such as 16x9 or 1920x1080"
)]  # fmt: skip


class PreferencesBody(msgspec.Struct, kw_only=True):
    """`user_preferences` as sent. As in the app plan, keys other than these three are left
    out (a client's own settings, such as its AI toggle, may ride along), and a style or format
    is read the way people write it: "Oil painting", "3D render", "16x9", "1024x1024", "vertical"."""

    quality: QualityText | None = None  # null or absent: balanced
    style: StyleText | None = None
    format: FormatText | None = None

    def __post_init__(self) -> None:  # msgspec runs it as it decodes: a bad value is a 422 here
        self.quality = _choice(self.quality, "quality", {}) or "balanced"
        self.style = _choice(self.style, "style", _STYLE_ALIASES)
        self.format = _choice(self.format, "format", _FORMAT_ALIASES)

    def to_preferences(self) -> Preferences:
        return Preferences(quality=self.quality, style=self.style, format=self.format)  # type: ignore[arg-type]


class ProcessBody(msgspec.Struct, kw_only=True):
    """The JSON body of /process, /stream and /compare (the plan's EnhancedGenerationRequest)."""

    prompt: str
    working_image_url: str | None = None
    # Images the user has just uploaded (the app's own storage), besides the one being worked
    # on: what the classifier and `image_missing` take into account.
    # null is none, as for the other optional fields (JavaScript clients send null for "empty").
    uploaded_image_urls: list[str] | None = None
    user_preferences: PreferencesBody | None = None
    use_ai_classification: bool = True


Body = TypeVar("Body")
_decoder = msgspec.json.Decoder(ProcessBody)


def decode_body(raw: bytes) -> ProcessBody:
    return decode_json(_decoder, raw)


_READABLE_CODINGS = ("", "identity", *CONTENT_CODINGS)  # "": an empty header, as aiohttp reads it


def require_json(content_type: str, content_encoding: str | None) -> None:
    """A JSON body must say so, in a coding the gateway reads: a form, plain text or a body in
    an unknown coding is a 415, not a guess."""
    if content_type != "application/json":
        raise UnsupportedMediaType(f"send Content-Type: application/json, not {content_type!r}")
    if content_encoding is not None and content_encoding.strip().lower() not in _READABLE_CODINGS:
        raise UnsupportedContentEncoding(content_encoding)


def decode_json(decoder: msgspec.json.Decoder[Body], raw: bytes) -> Body:
    """A JSON request body as `decoder`'s type, or the 400/422 that says what is wrong with it."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:  # well-formed JSON, wrong shape: subclass of DecodeError
        raise _as_validation_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bytes that are not UTF-8 inside a string
        if not raw.strip():  # msgspec's words for it, "Input data was truncated", puzzle a client
            raise MalformedJSON("request body is empty: send a JSON object") from None
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested ~1,000 deep, even in an ignored field
        raise MalformedJSON("request body nests too deeply") from None


@overload
def query_count(query: Mapping[str, str], name: str, *, default: int, high: int) -> int: ...
@overload
def query_count(query: Mapping[str, str], name: str, *, default: None, high: int) -> int | None: ...
def query_count(query: Mapping[str, str], name: str, *, default: int | None, high: int) -> int | None:
    """A whole-number query parameter from 1 to `high`, or the 422 that names it.

    ASCII digits only: "\u00b2".isdigit() is true and int() refuses it, and int() refuses
    strings over 4,300 digits; both would otherwise be 500s.
    """
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(high)) and 1 <= int(raw) <= high):
        raise ValidationFailed(f"{name} must be a whole number from 1 to {high}", field=name)
    return int(raw)


def decode_query(raw_query: str) -> ProcessBody:
    """The GET stream's query string (for EventSource, which cannot POST), as sent.

    Decoded here rather than by yarl, which turns percent-escapes that are not UTF-8 into U+FFFD:
    "caf%E9" (Latin-1) reached the classifier as "caf\ufffd". An empty optional parameter is an
    absent one, as an HTML form sends a select left alone.
    """
    query: dict[str, str] = {}
    try:
        pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise MalformedQuery("query string is not UTF-8 once its percent-escapes are decoded") from None
    for key, value in pairs:
        query.setdefault(key, value)  # the first of a repeated name, as request.query gives
    raw: dict[str, object] = {key: query[key] for key in ("prompt", "working_image_url") if key in query}
    # The POST body's uploaded_image_urls, one repeated parameter each (a URL may hold a comma),
    # under the name a form, PHP-style "[]" or the body's plural gives it.
    if uploads := [value for key, value in pairs if key in _UPLOAD_PARAMETERS]:
        raw["uploaded_image_urls"] = uploads
    if switch := query.get("use_ai_classification"):
        # What a form's checkbox (on) or a select (yes/no) sends, besides true/false and 1/0.
        raw["use_ai_classification"] = _SWITCHES.get(switch.lower(), switch)
    prefs = {key: query[key] for key in ("quality", "style", "format") if query.get(key)}
    if prefs:
        raw["user_preferences"] = prefs
    try:
        return msgspec.convert(raw, ProcessBody, strict=False)
    except msgspec.ValidationError as exc:
        error = _as_validation_error(exc)
    except ValidationFailed as exc:  # PreferencesBody's: a value that is none of its choices
        error = exc
    if error.field == "use_ai_classification":  # not "Expected `bool`, got `str`": all values are
        raise ValidationFailed(
            "use_ai_classification must be true or false (or 1 or 0, on or off, yes or no)",
            field="use_ai_classification",
        )
    # Named as sent: here a preference is a parameter of its own.
    field = error.field and error.field.removeprefix("user_preferences.")
    raise ValidationFailed(error.detail, field=field) from None


_SWITCHES = {"on": True, "off": False, "yes": True, "no": False}
_UPLOAD_PARAMETERS = frozenset({"uploaded_image_url", "uploaded_image_url[]", "uploaded_image_urls"})
_MISSING_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")
# What a preference may be: said when a value is none of them.
_CHOICES = {"quality": get_args(Quality), "style": get_args(Style), "format": get_args(Format)}


def _as_validation_error(exc: msgspec.ValidationError) -> ValidationFailed:
    message = str(exc)
    head, sep, path = message.rpartition(" - at `$")
    field = path.rstrip("`").lstrip(".") if sep else ""
    # "Object missing required field `image_url`" (or "contains unknown field `imge_url`") names
    # the field in the message, and only the object that lacks or has it (if not the body) in the path.
    missing = _MISSING_FIELD.search(message)
    if missing:
        field = f"{field}.{missing[1]}" if field else missing[1]
    return ValidationFailed(head if sep else message, field=field or None)


def to_pipeline_request(
    body: ProcessBody, *, user_id: str, trace_id: str, url_policy: UrlPolicy | None = None
) -> PipelineRequest:
    prompt = clean_prompt(body.prompt)
    url = body.working_image_url.strip() if body.working_image_url else None
    if url:
        check_image_url(url, policy=url_policy)
    uploaded = body.uploaded_image_urls or []
    if len(uploaded) > MAX_UPLOADED_IMAGES:
        raise ValidationFailed(f"at most {MAX_UPLOADED_IMAGES} uploaded images", field="uploaded_image_urls")
    uploads: dict[str, None] = {}  # each image once, in order
    for index, upload in enumerate(uploaded):
        if upload := upload.strip():  # as an empty working_image_url is none, a blank is left out
            check_image_url(upload, field=f"uploaded_image_urls[{index}]", policy=url_policy)
            uploads.setdefault(upload, None)
    return PipelineRequest(
        prompt=prompt,
        user_id=user_id,
        trace_id=trace_id,
        working_image_url=url or None,
        uploaded_image_urls=tuple(uploads),
        preferences=body.user_preferences.to_preferences() if body.user_preferences else Preferences(),
        use_ai_classification=body.use_ai_classification,
    )


# How people write a style, beyond its own name with spaces, hyphens or capitals.
_STYLE_ALIASES: dict[str, Style] = {
    "photo": "photorealistic", "photograph": "photorealistic", "realistic": "photorealistic",
    "photo_realistic": "photorealistic", "film": "cinematic", "movie": "cinematic", "manga": "anime",
    "comic": "cartoon", "cartoonish": "cartoon", "watercolour": "watercolor", "oil": "oil_painting",
    "oil_paint": "oil_painting", "painting": "oil_painting", "pencil": "sketch", "pencil_sketch": "sketch",
    "drawing": "sketch", "digital": "digital_art", "digital_painting": "digital_art", "3d": "3d_render",
    "render": "3d_render", "cgi": "3d_render", "retro": "vintage", "minimal": "minimalist",
}  # fmt: skip
_FORMAT_ALIASES: dict[str, Format] = {
    "vertical": "portrait", "tall": "portrait", "horizontal": "landscape", "wide": "landscape",
    "widescreen": "16:9", "wide_screen": "16:9", "1x1": "1:1",
}  # fmt: skip
_SIZE = re.compile(r"(\d{1,5})\s*[x\u00d7:/]\s*(\d{1,5})")  # 16x9, 16:9, 1024x1024, 1920 x 1080 (lower-cased)


def _choice(text: str | None, name: str, aliases: Mapping[str, str]) -> str | None:
    """A style or format as one of its choices: its name in any case, with spaces or hyphens
    for underscores; an alias; for a format, any width x height that reduces to a ratio."""
    if text is None or not text.strip():
        return None
    choices = _CHOICES[name]
    key = re.sub(r"[\s_-]+", "_", text.strip().lower())
    if key in choices:
        return key
    if key in aliases:
        return aliases[key]
    if name == "format" and (size := _SIZE.fullmatch(text.strip().lower())):
        width, height = int(size[1]), int(size[2])
        if width and height:
            divisor = math.gcd(width, height)
            ratio = f"{width // divisor}:{height // divisor}"
            if ratio in choices:
                return ratio
    sizes = " (or a width x height such as 1920x1080)" if name == "format" else ""
    field = f"user_preferences.{name}"
    raise ValidationFailed(f"{name} must be one of: {', '.join(choices)}{sizes}", field=field)


def check_image_url(
    url: str, *, field: str = "working_image_url", policy: UrlPolicy | None = None
) -> None:
    """422 unless `url` is an https URL on an allowed storage host (see gateway/urlpolicy.py)."""
    (policy or ImageUrlPolicy()).check(url, field=field)
