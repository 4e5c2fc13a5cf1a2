"""The event loop's handler for exceptions nothing else caught: logged by type and place,
never by their text.

asyncio's default handler logs such an exception with its message and every chained
exception's message. Those can quote what a client sent: a protocol library that fails on
a request (hypercorn on an HTTP/2 stream it cannot set up) raises while the raw bytes of
the connection, an ``Authorization`` header included, sit in the exception it chains. This
handler logs the context's own message, then each exception of the chain as its type and
the frames it passed through (file, line, function), which is what finding the bug needs.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any

log = logging.getLogger("enclave.unhandled")

MAX_CHAINED = 5  # exceptions of a chain described (cause or context, newest first)


def describe(exc: BaseException) -> str:
    """``exc`` and the exceptions it chains: types and frames, no messages."""
    lines: list[str] = []
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen and len(seen) < MAX_CHAINED:
        seen.add(id(current))
        kind = type(current)
        lines.append(f"{kind.__module__}.{kind.__qualname__}")
        for frame in traceback.extract_tb(current.__traceback__):
            lines.append(f"  at {frame.filename}:{frame.lineno} in {frame.name}")
        current = current.__cause__ or current.__context__
    return "\n".join(lines)


def log_unhandled(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """For ``loop.set_exception_handler``."""
    message = str(context.get("message") or "unhandled exception in the event loop")
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        log.error("%s: %s", message, describe(exc))
    else:
        log.error("%s", message)
