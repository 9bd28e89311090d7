"""What one backend response may cost the gateway: the size of its head, its header count, and
how long the backend may keep the gateway waiting (for the head, and between two reads of the
body). Set from ``server.upstream_*`` and ``backends.*.*_timeout_s`` (proxy/config/model.py)."""

from __future__ import annotations

from dataclasses import dataclass

# Why a response failed, for the caller that maps it to a status (forward.body_failure).
TIMEOUT, TOO_LARGE, MALFORMED = "timeout", "too_large", "malformed"


@dataclass(frozen=True, slots=True)
class Limits:
    max_head_bytes: int = 65536  # the response head (status line, headers, interim 1xx heads): 502 beyond
    max_headers: int = 100  # header lines in the response head(s): 502 beyond
    head_timeout_s: float = 60.0  # from the request written to the response's head complete: 504 beyond
    read_timeout_s: float = 60.0  # no body byte for this long while the gateway reads: the stream breaks off
