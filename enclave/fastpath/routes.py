"""Which requests the fast path serves, and the application code that answers them.

``FastRoutes.of(app, wanted)`` looks each wanted (method, path) up in the application's
router (an exact, static path) and wraps the route's handler in the application's
middlewares, innermost last, exactly as aiohttp composes them for a request. The fast path
therefore runs the same code as aiohttp would (authentication, access levels, audit,
metrics, request log, problem answers); what it skips is aiohttp's per-request protocol
machinery: its parser state, ``Request``, payload stream, per-request task bookkeeping and
response writer (measured: about 180 us of the 270 us a bare aiohttp HTTPS request costs
here, against 90 us for TLS and a minimal HTTP/1.1 exchange).

A route is left out (so aiohttp serves it) when it is not on a plain resource of the main
application, and the fast path is off altogether when the application has
``on_response_prepare`` handlers, which only aiohttp's response writer runs.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_urldispatcher import PlainResource, UrlMappingMatchInfo

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class FastRoute:
    method: str
    path: str
    match_info: UrlMappingMatchInfo
    answer: Answer  # the route's handler inside every middleware of the application


@dataclass(frozen=True)
class FastRoutes:
    app: web.Application
    by_target: dict[bytes, FastRoute]
    body_limit: int  # a longer declared body goes to aiohttp, which refuses it (413)

    @classmethod
    def of(
        cls, app: web.Application, wanted: Iterable[tuple[str, str]], body_limit: int
    ) -> FastRoutes:
        """Call once the application is frozen (after ``AppRunner.setup``). ``body_limit``:
        the application's own request body limit."""
        routes: dict[bytes, FastRoute] = {}
        if not app.on_response_prepare:
            for method, path in wanted:
                route = _find(app, method, path)
                if route is not None:
                    routes[path.encode("ascii")] = route
        return cls(app, routes, body_limit)

    def __bool__(self) -> bool:
        return bool(self.by_target)


def _find(app: web.Application, method: str, path: str) -> FastRoute | None:
    for resource in app.router.resources():
        if not isinstance(resource, PlainResource) or resource.canonical != path:
            continue
        for route in resource:
            if route.method == method:
                match_info = UrlMappingMatchInfo({}, route)
                match_info.add_app(app)
                match_info.freeze()
                return FastRoute(method, path, match_info, _wrapped(app, route.handler))
    return None


def _wrapped(app: web.Application, handler: Callable[..., object]) -> Answer:
    answer: Answer = handler  # type: ignore[assignment]
    for middleware in reversed(app.middlewares):
        answer = functools.partial(middleware, handler=answer)
    return answer
