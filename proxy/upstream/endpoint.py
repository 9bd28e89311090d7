"""Where a backend URL points, and the request head the gateway writes to it."""

from __future__ import annotations

from collections.abc import Mapping
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


def request_head(method: str, ep: Endpoint, headers: Mapping[str, str], body_len: int | None) -> bytes:
    """The request line and headers. Values come from aiohttp's parser (no CR/LF possible) or from
    the config (validated at load), so they are written as they are."""
    lines = [f"{method} {ep.target} HTTP/1.1", f"Host: {ep.host_header}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body_len is not None:
        lines.append(f"Content-Length: {body_len}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
