"""Flow and environment resolution, and the credential's scope over them.

Runs after authentication so that an anonymous client cannot tell which flows exist.
"""

from __future__ import annotations

from .. import metrics as m
from ..errors import Forbidden, InvalidToken, NotFound
from ..run import Run
from .base import Policy


class Routing(Policy):
    """Sets ``run.flow``, ``run.target`` and ``run.backend``; 404 for unknown/unpublished flows and
    missing env targets; 403 (dialect-rendered) for a key whose scope does not cover them."""

    name = "routing"

    async def on_request(self, run: Run) -> None:
        cfg = self.config
        flow = cfg.flow(run.flow_ref, by_name=run.by_name)
        if (
            flow is None
            or not flow.published
            or (run.tenant is not None and (flow.tenant != run.tenant or flow.workspace != run.workspace))
        ):
            raise NotFound("workflow not found or not published")
        if run.credential_kind == "token":
            # A token carries its owner (and maybe one flow): anything else is not what it was for.
            if (
                run.key is None
                or not run.key.covers(flow, run.env)
                or (run.bound_flow is not None and run.bound_flow != flow.id)
            ):
                run.reason = "token_wrong_flow"
                m.STREAM_TOKENS_REFUSED.labels("wrong_flow").inc()
                raise InvalidToken("the stream token is not valid for this workflow")
        elif run.key is None or not run.key.covers(flow, run.env):
            raise Forbidden("the API key's scope does not cover this flow and environment")
        target = flow.targets.get(run.env)
        if target is None:
            raise NotFound(f"the flow has no {run.env.value} environment")
        run.flow, run.target, run.backend = flow, target, cfg.backends[target.backend]
