"""Reading a request body whole, within a size and a time: for every aiohttp route of the
enclave (the KMS API's ``read_body``, the K/V routes), each of which answers the two
refusals in its own problem vocabulary.

A body that has fully arrived (``StreamReader.is_eof()``, and always on the fast path) is
read without arming a deadline; one still arriving must end within ``seconds``, so a body
sent slowly or never finished cannot hold its connection and handler.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class BodyStream(Protocol):
    """What is read: aiohttp's ``StreamReader``, or the fast path's ``BodyReader``."""

    def is_eof(self) -> bool: ...

    async def readany(self) -> bytes: ...


async def read_whole(
    content: BodyStream, limit: int, *, declared: int | None, seconds: float
) -> bytes:
    """The body, or, when it is longer than ``limit``, more than ``limit`` bytes of it (the
    rest is not read: the caller refuses it). ``TimeoutError`` when a body still arriving
    is not whole within ``seconds``."""
    if content.is_eof():  # all of it is here: no read can wait
        return await _read_up_to(content, limit, declared)
    async with asyncio.timeout(seconds):
        return await _read_up_to(content, limit, declared)


async def _read_up_to(content: BodyStream, limit: int, declared: int | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    # ``readany`` directly: ``iter_any`` wraps each chunk in an async iterator step.
    while chunk := await content.readany():
        size += len(chunk)
        chunks.append(chunk)
        if size > limit or size == declared:
            break  # over the limit, or all of a declared body: the next read is not needed
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
