"""A request head as the gateway writes it to a backend (RFC 9112 section 3), beside the response
heads of :mod:`proxy.http1.replies`."""

from __future__ import annotations

from collections.abc import Mapping


def request_head(method: str, target: str, host: str, headers: Mapping[str, str], body_len: int | None) -> bytes:
    """The request line, ``Host``, ``headers`` and the body's ``Content-Length`` (None: no body).
    Values come from aiohttp's parser (no CR/LF possible) or from the config (validated at load),
    so they are written as they are."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body_len is not None:
        lines.append(f"Content-Length: {body_len}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
