"""Structured logs: one JSON object per line, with whatever `extra` fields a call adds.

A record logged while a span is current (a stage's warning, a dependency's error) carries that
span's trace_id and span_id, so any log line leads to its trace.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec
from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    # msgspec: several times faster than json.dumps on the one-line-per-request path.
    _encode = msgspec.json.Encoder(enc_hook=str).encode

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # with `serve --workers N`, which worker said it
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if "trace_id" not in entry:
            # Formatting runs in the logging call's context, so the current span is the caller's.
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                entry["trace_id"] = f"{span_context.trace_id:032x}"
                entry["span_id"] = f"{span_context.span_id:016x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encode(entry).decode()


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines, replacing the handlers any earlier
    call set (the supervisor configures its own, and each worker process its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats our per-request line in another format.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
