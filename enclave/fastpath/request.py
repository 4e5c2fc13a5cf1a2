"""The request object the fast path hands to the application's middlewares and handlers.

It offers the part of ``aiohttp.web.Request`` that the served routes and every middleware on
their way use (``enclave.fastpath.routes`` names the routes; the tests run each through
both paths and compare the answers and the audit records): ``app``, ``method``, ``path``,
``headers``, ``match_info`` (aiohttp's own, for the route), ``content_length``, ``content``
(its ``readany``), ``query`` (always empty: a target with a query is not fast) and the
request's own storage (``request[KEY]``, ``request.get(KEY)``). Anything else is an
``AttributeError``, which the problem middleware answers as a 500: the tests would show it.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

_NO_QUERY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


class BodyReader:
    """``request.content`` for a body that has fully arrived: ``readany`` gives it once."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    def is_eof(self) -> bool:
        return True  # the whole body is here: no read can wait

    async def readany(self) -> bytes:
        body, self._body = self._body, b""
        return body


class FastRequest(MutableMapping[str, Any]):
    __slots__ = (
        "_storage",
        "app",
        "content",
        "content_length",
        "headers",
        "match_info",
        "method",
        "path",
    )  # fmt: skip

    def __init__(
        self,
        app: web.Application,
        *,
        method: str,
        path: str,
        headers: tuple[tuple[str, str], ...],
        match_info: UrlMappingMatchInfo,
        body: bytes,
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(headers))
        self.match_info = match_info
        self.content_length = len(body)
        self.content = BodyReader(body)
        self._storage: dict[str, Any] = {}

    @property
    def query(self) -> MultiDictProxy[str]:
        return _NO_QUERY

    def get(self, key: str, default: Any = None) -> Any:  # the mixin's is slower
        return self._storage.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._storage[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._storage[key] = value

    def __delitem__(self, key: str) -> None:
        del self._storage[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._storage)

    def __len__(self) -> int:
        return len(self._storage)

    def __repr__(self) -> str:  # never the headers: they carry the bearer token
        return f"<FastRequest {self.method} {self.path}>"
