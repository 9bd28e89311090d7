"""Which of the app's routes a request head names, decided by the front without aiohttp.

:meth:`Routes.route` answers, for a path without ``%``-escapes or dot segments (those are aiohttp's
to decode, so they are always handed over), the front route (a dialect route,
:data:`~proxy.front.FRONT_ROUTES`) the method and path name, if any; else whether *no* route of the
whole app takes them, and then what aiohttp's router would answer: ``404`` (no resource matches
the path) or ``405`` (resources match, none with this method; ``Allow`` lists theirs, as aiohttp
writes it).

The second lets the front answer junk paths and wrong methods itself, through the app's
middlewares (the access line, the problem+json body), instead of handing the connection to aiohttp
for one request, which costs several times a valid token mint: an unauthenticated flood of junk
paths would otherwise be the cheapest way to load a worker.

Both are read off aiohttp's own resources (their ``canonical`` templates, ``{name}`` being one path
segment, as :class:`aiohttp.web_urldispatcher.DynamicResource` reads it). A router holding anything
else (a ``{name:regex}`` segment, a static or sub-app resource, a ``*`` method) is not modelled here:
:meth:`Routes.route` then refuses nothing and every unmatched request is handed over as before.
``tests/front/test_routing.py`` checks the decisions against aiohttp's router, path by path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import DynamicResource, MatchInfoError, PlainResource, UrlMappingMatchInfo

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def pattern(canonical: str) -> re.Pattern[str]:
    """A route template as aiohttp reads it (``{name}`` is one path segment), for paths without
    ``%``-escapes (the front hands those to aiohttp, whose decoding rules then apply)."""
    out, last = [], 0
    for m in _PARAM.finditer(canonical):
        out += (re.escape(canonical[last:m.start()]), f"(?P<{m.group(1)}>[^{{}}/]+)")
        last = m.end()
    out.append(re.escape(canonical[last:]))
    return re.compile("".join(out))


def decidable(path: str) -> bool:
    """A path the front may route: one leading slash, no ``%``-escape, no dot segment (``.`` or
    ``..``, which aiohttp's URL parsing removes; ``/.env`` is an ordinary segment)."""
    if path[:1] != "/" or path[1:2] == "/" or "%" in path:
        return False
    if "/." not in path:
        return True
    return not any(segment in (".", "..") for segment in path.split("/"))


class Routes:
    """The front's routes and, when the router is plain enough, every route's path and methods."""

    __slots__ = ("front", "resources", "not_found", "refuse")

    def __init__(self, router: web.UrlDispatcher, front_routes: Iterable[web.AbstractRoute],
                 handler_for: Callable[[Any], Any], refuse: Any) -> None:
        self.front = [(pattern(r.resource.canonical), r.method, r, handler_for(r.handler))
                      for r in front_routes if r.resource is not None]
        self.refuse = refuse  # the handler of a request no route takes (its match info says 404 or 405)
        # every 404's match info (never raised: the handler raises an exception of its own, or the
        # tracebacks of every request would pile up on this one)
        self.not_found = MatchInfoError(web.HTTPNotFound())
        # (pattern, methods) of every resource; None: a router this module does not model
        self.resources: list[tuple[re.Pattern[str], frozenset[str]]] | None = []
        for resource in router.resources():
            methods = frozenset(route.method for route in resource)
            plain = type(resource) in (PlainResource, DynamicResource)
            if not plain or "*" in methods or (isinstance(resource, DynamicResource)  # a {name:regex} segment
                                               and pattern(resource.canonical).pattern
                                               != resource.get_info()["pattern"].pattern):
                self.resources = None
                break
            self.resources.append((pattern(resource.canonical), methods))

    def route(self, method: str, path: str) -> tuple[UrlMappingMatchInfo, Any] | None:
        """(match info, handler) of the front route ``method`` and ``path`` name; when no route of
        the app takes them, (the match info aiohttp's router would give the request, 404 or 405,
        and ``refuse``); None: the request is aiohttp's (an ops route, a path that is not
        :func:`decidable`, a router not modelled here)."""
        if not decidable(path):
            return None  # escaped or dot segments: aiohttp's rules
        for compiled, route_method, route, handler in self.front:
            m = compiled.fullmatch(path)
            if m is not None and route_method == method:
                return UrlMappingMatchInfo(m.groupdict(), route), handler
        if self.resources is None:
            return None
        allowed: set[str] = set()
        for compiled, methods in self.resources:
            if compiled.fullmatch(path) is not None:
                if method in methods:
                    return None
                allowed |= methods
        if allowed:
            return MatchInfoError(web.HTTPMethodNotAllowed(method, allowed)), self.refuse
        return self.not_found, self.refuse
