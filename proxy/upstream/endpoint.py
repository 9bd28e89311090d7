"""Where a backend URL points (the request head written to it is :mod:`proxy.http1.request`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one backend URL points: the connection key, the Host header and the request target."""

    key: tuple[str, str, int]  # (scheme, host, port): connections are pooled per key
    host_header: str
    target: str  # path and query, as configured


def endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    scheme, host = parts.scheme, parts.hostname or ""
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    netloc_host = f"[{host}]" if ":" in host else host
    host_header = netloc_host if port == default else f"{netloc_host}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint((scheme, host, port), host_header, target)
