"""Running the gateway: logging, the event loop and the listening socket."""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings
from observability.logging import configure_logging

log = logging.getLogger(__name__)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    configure_logging(settings.log_level)
    host = host or settings.host
    port = port or settings.port
    log.info(
        "starting gateway",
        extra={"host": host, "port": port, "classifier": settings.intent_classifier},
    )
    # handler_cancellation: a client that disconnects cancels its handler and so its pipeline.
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        handler_cancellation=True,
        access_log=None,
        print=None,
    )
    return 0
