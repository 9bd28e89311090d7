"""``GET {workflow prefix}api/v1/token``: a server holding a key mints a single-use stream token.

The token route is for servers: no CORS. ``ttl`` defaults to ``limits.token_ttl_s`` and is clamped to
1..``limits.token_ttl_max_s``; ``workflow_id`` optionally binds the token to one flow.
"""

from __future__ import annotations

import time

from aiohttp import web

from .. import metrics as m
from ..context import GATEWAY
from ..dialects.workflow import WorkflowDialect, key_from_headers
from ..errors import BadRequest, GatewayError, NotFound
from ..logging import bind as bind_log
from ..policies.api_key import identify, require
from ..policies.keys import key_fingerprint
from ..policies.rate_limit import check_rate
from ..policies.stream_token import new_token, token_digest


def _ttl(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("ttl must be a whole number of seconds") from None
    return max(1, min(value, maximum))


async def mint_token(request: web.Request, dialect: WorkflowDialect) -> web.Response:
    gw = request.app[GATEWAY]
    cfg = gw.config
    try:
        secret = key_from_headers(request)
        ttl = _ttl(request.query.get("ttl"), cfg.limits.token_ttl_s, cfg.limits.token_ttl_max_s)
        key = await identify(gw.keys, secret)
        bind_log(key_id=key.id)  # on the access line, the 403's too
        require(key, "Execute")
        rate_headers: dict[str, str] = {}
        await check_rate(gw.store, key, rate_headers)
        flow_id = request.query.get("workflow_id") or None
        if flow_id is not None:
            flow = cfg.flow(flow_id)
            if flow is None or not flow.published or flow.owner != key.owner:
                raise NotFound("workflow not found or not published")
        token = new_token()
        record = {"owner": key.owner, "key_id": key.id, "key_fp": key_fingerprint(key), "flow_id": flow_id}
        await gw.store.put_token(token_digest(token), record, time.time() + ttl)
    except GatewayError as err:
        m.child(m.REJECTIONS, dialect.name, err.kind).inc()
        return dialect.render_error(err)
    m.STREAM_TOKENS_MINTED.inc()
    return web.Response(
        # not orjson: its output keeps a 4 kB buffer, and aiohttp holds a connection's last response
        # while the next request (often the stream this token is for) runs
        body=b'{"success":true,"token":"%s","ttl":%d}' % (token.encode(), ttl),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **rate_headers},
    )
