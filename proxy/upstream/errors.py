"""What the backend client raises: the caller (:mod:`proxy.upstream.forward`) maps them to 502 / 504."""

from __future__ import annotations


class UpstreamError(Exception):
    """The backend could not be reached, or closed or garbled the connection before its headers."""


class UpstreamTimeout(UpstreamError):
    """The backend's response head was not complete within ``head_timeout_s``."""
