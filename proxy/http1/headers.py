"""Header rules both ways: hop-by-hop stripped, client credentials never forwarded, no buffering."""

from __future__ import annotations

import re
from collections.abc import Mapping

from multidict import CIMultiDict

# RFC 9110 7.6.1 connection-specific fields, plus those a proxy must never pass on.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# The client's credentials and what the gateway itself sets for the backend; plus what a client
# could claim about the connection that the gateway alone knows (its scheme, port, address), under
# the other names frameworks read (Rack: X-Forwarded-Ssl/-Scheme; IIS: Front-End-Https; nginx
# setups: X-Real-IP). Traefik strips the same from clients it does not trust.
NOT_FORWARDED = HOP_BY_HOP | frozenset({
    "host", "content-length", "x-api-key", "authorization", "cookie", "accept-encoding",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "origin", "referer",
    "x-forwarded-ssl", "x-forwarded-scheme", "x-forwarded-protocol", "x-forwarded-port", "x-url-scheme",
    "front-end-https", "x-real-ip",
})

# Every admitted run: never cached, never buffered by a proxy in front of us (nginx honours the
# X-Accel-Buffering header), never compressed.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

JOB_ID_HEADER = "flow-job-id"

# RFC 3986 host[:port] (IP-literal, or reg-name / IPv4); what X-Forwarded-Host may carry
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(:[0-9]{0,5})?")


def valid_host(host: str | None) -> str | None:
    """``host`` when it is a valid ``Host`` value, else None (never forwarded then)."""
    if host is None:
        return None
    host = host.strip()
    return host if _HOST.fullmatch(host) else None


def upstream_headers(
    client: Mapping[str, str], backend_headers: Mapping[str, str], *, peer: str | None, scheme: str, host: str | None
) -> CIMultiDict[str]:
    """Headers for the backend request: the client's, minus hop-by-hop fields (including any the
    client listed in ``Connection``), credentials and names holding ``_`` (nginx drops them: they can
    pass as ``-`` names through CGI-style backends), plus X-Forwarded-* and the backend's own;
    ``X-Forwarded-Host`` only from a valid ``host``."""
    listed = {t.strip().lower() for t in client.get("Connection", "").split(",") if t.strip()}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        low = name.lower()
        if low in NOT_FORWARDED or low in listed or "_" in low:
            continue
        out.add(name, value)
    prior = client.get("X-Forwarded-For")
    if peer:
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    out["X-Forwarded-Proto"] = scheme
    host = valid_host(host)
    if host:
        out["X-Forwarded-Host"] = host
    out["Accept-Encoding"] = "identity"  # we meter what we read: no compressed bodies
    for name, value in backend_headers.items():
        out[name] = value
    return out
