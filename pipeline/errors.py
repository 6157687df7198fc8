"""Errors the pipeline raises on purpose; the gateway maps them to HTTP in one place."""

from __future__ import annotations


class PipelineError(Exception):
    """Root of errors that end a request instead of falling back to a default."""

    code = "pipeline_error"


class Overloaded(PipelineError):
    """No classification slot freed up within the queue timeout."""

    code = "overloaded"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many classifications in flight; retry in {retry_after:g}s")
        self.retry_after = retry_after
