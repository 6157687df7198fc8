"""The LLM classifier's one upstream call, over the openai SDK (any OpenAI-compatible API).

The classifier (pipeline/classifiers/llm.py) sees a Completion or a ChatFailed; the SDK's
exceptions, HTTP statuses and Retry-After headers stay here.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any, cast

import openai
from openai import AsyncOpenAI

from observability.tracing import trace_headers
from pipeline.classifiers.llm import ChatFailed, Completion

log = logging.getLogger(__name__)


class OpenAIChat:
    """`ChatModel` over an AsyncOpenAI client (its own retries off: the classifier's are the ones)."""

    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model

    async def complete(  # `within`: seconds the upstream has to answer
        self,
        messages: list[dict[str, str]],
        *,
        response_format: dict[str, Any],
        max_tokens: int,
        within: float,
    ) -> Completion:
        try:
            completion = await self.client.chat.completions.create(
                model=self.model,
                messages=cast(Any, messages),  # the SDK's TypedDicts: these are the same dicts
                response_format=cast(Any, response_format),
                temperature=0,
                max_tokens=max_tokens,
                timeout=within,
                # Called inside the classifier's CLIENT span: the upstream's parent is that span.
                extra_headers=trace_headers(),
            )
        except openai.RateLimitError as exc:
            wait = retry_after(exc)
            raise ChatFailed("rate_limited", exc.message, retryable=True, retry_after=wait) from exc
        except openai.InternalServerError as exc:
            raise ChatFailed(f"status_{exc.status_code}", exc.message, retryable=True) from exc
        except openai.APITimeoutError as exc:
            reason = "upstream_timeout" if _timed_out(exc) else "connection_error"
            raise ChatFailed(reason, str(exc), retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise ChatFailed("connection_error", str(exc), retryable=True) from exc
        except openai.APIStatusError as exc:
            raise ChatFailed(f"status_{exc.status_code}", exc.message) from exc
        except openai.OpenAIError as exc:
            raise ChatFailed("client_error", str(exc)) from exc
        except ValueError as exc:  # a 200 whose body is not JSON: a proxy's page, say
            raise ChatFailed("unparsable", f"the answer is not JSON: {exc}") from exc
        return read_completion(completion)


def retry_after(error: openai.APIStatusError) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if any."""
    value = error.response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the backoff alone decides
    return max(0.0, when.timestamp() - time.time())


def _timed_out(exc: BaseException) -> bool:
    """Whether an APITimeoutError was a timeout. The SDK's aiohttp adapter maps any connection
    failure (refused, reset, the server gone) to a connect timeout, so an upstream that is down
    read as a slow one; a real timeout has a TimeoutError among its causes."""
    cause = exc.__cause__ or exc.__context__
    for _ in range(16):  # a chain can loop back on itself; a real one is a few links long
        if cause is None:
            return False
        if isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def read_completion(completion: Any) -> Completion:
    """The first choice's content and the token counts of a 200 answer.

    The SDK builds its objects without validating them, so a server that is not
    OpenAI-compatible hands us strings, nulls or lists where objects belong.
    """
    try:
        if not completion.choices:
            raise ChatFailed("unparsable", "no choices")
        content = completion.choices[0].message.content
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ChatFailed("unparsable", f"the answer is not a chat completion: {exc!r}") from exc
    text = content if isinstance(content, str) or content is None else str(content)
    return Completion(content=text, tokens=_read_usage(getattr(completion, "usage", None)))


def _read_usage(usage: Any) -> tuple[int, int] | None:
    """The token counts, when the answer carries them as numbers. Bookkeeping only: local servers
    send nulls or leave them out, and that is no reason to throw a good answer away."""
    if usage is None:
        return None
    try:
        return int(usage.prompt_tokens), int(usage.completion_tokens)
    except (AttributeError, TypeError, ValueError):
        log.debug("LLM answer without usable token counts: %r", usage)
        return None
