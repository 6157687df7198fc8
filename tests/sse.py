"""Parse an SSE body with an independent parser (sseclient-py), not our own framing code."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import sseclient


class Event(msgspec.Struct):
    id: str | None
    event: str
    data: dict[str, Any]


def parse_events(body: bytes) -> list[Event]:
    client = sseclient.SSEClient(iter([body]))
    return [Event(e.id, e.event, json.loads(e.data)) for e in client.events()]
