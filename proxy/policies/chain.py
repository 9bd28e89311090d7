"""The one place the policy chain's order is decided: its order is the execution order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .api_key import ApiKey
from .base import Policy
from .credits import Credits
from .deadline import Deadline
from .rate_limit import RateLimit
from .routing import Routing
from .stream_token import StreamToken

if TYPE_CHECKING:
    from ..context import Gateway


def build_chain(gw: Gateway, credential: str) -> list[Policy]:
    """The policy chain for runs authenticated by ``credential`` ("key" or "token")."""
    return [
        StreamToken(gw) if credential == "token" else ApiKey(gw),
        Routing(gw),
        RateLimit(gw),
        Credits(gw),
        Deadline(gw),
    ]
