"""The dialects' route table, and the check that two mounted dialects do not answer the same route.

A leaf: the router (app.py, the front) and the config's validation both read it; it imports nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

# (method, path relative to the dialect's prefix, route name). Route names are bounded label values.
ROUTES: dict[str, list[tuple[str, str, str]]] = {
    "profitbase": [
        ("POST", "api/v1/tenants/{tenantId}/workspaces/{workspaceId}/flows/{flowId}/run-streaming", "run-streaming"),
        ("POST", "api/v1/tenants/{tenantId}/workspaces/{workspaceId}/flows/{flowId}/stream", "stream"),
        ("POST", "api/v1/tenants/{tenantId}/workspaces/{workspaceId}/flows/{flowId}/run", "run"),
    ],
    "workflow": [
        ("GET", "api/v1/token", "token"),
        ("POST", "api/v1/run/{workflowId}/stream", "stream"),
        ("OPTIONS", "api/v1/run/{workflowId}/stream", "preflight"),
        ("POST", "api/v1/run/{workflowId}", "run"),
    ],
    "langflow": [
        ("POST", "api/v1/run/{flowIdOrName}", "run"),
    ],
}


def dialect_routes(name: str, prefix: str) -> list[tuple[str, str]]:
    """(method, path) of every route a dialect mounts under ``prefix``."""
    return [(method, prefix + path) for method, path, _route in ROUTES[name]]


def _segments_overlap(a: str, b: str) -> bool:
    sa, sb = a.strip("/").split("/"), b.strip("/").split("/")
    if len(sa) != len(sb):
        return False
    return all(x == y or x.startswith("{") or y.startswith("{") for x, y in zip(sa, sb, strict=True))


def mount_collisions(prefixes: Mapping[str, str]) -> list[str]:
    """One problem per pair of dialects (name -> normalised prefix, ending in ``/``) that would
    answer the same method and path, named by the config key to change."""
    problems = []
    names = sorted(prefixes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = dialect_routes(a, prefixes[a]), dialect_routes(b, prefixes[b])
            clash = next(
                ((ma, pa, pb) for ma, pa in ra for mb, pb in rb if ma == mb and _segments_overlap(pa, pb)), None
            )
            if clash:
                problems.append(
                    f"dialects.{b}.prefix: mounts collide: {a} {clash[0]} {clash[1]} and {b} {clash[0]} {clash[2]} "
                    f"(give one of them another prefix)"
                )
    return problems
