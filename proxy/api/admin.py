"""The admin API under ``/admin/v1/``: keys made and revoked at run time, account figures, credit
grants and ledgers. Authorised by a key holding policy ``Admin`` (``Authorization: Bearer`` or
``x-api-key``): none or an unknown one → 401, one without ``Admin`` → 403. Every error is
problem+json (:func:`~proxy.errors.problem_response`); a bad body changes nothing.

An Admin key administers every account (there is no per-account admin scope). Secrets appear once,
in the answer to the ``POST`` that made the key; listings show neither secrets nor hashes.
"""

from __future__ import annotations

import re
import time

import structlog
from aiohttp import web
from orjson import dumps, loads
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..context import GATEWAY, Gateway
from ..dialects.workflow import key_from_headers
from ..errors import BadRequest, GatewayError, NotFound, problem_response, problem_type
from ..logging import bind as bind_log
from ..policies.api_key import identify, require
from ..policies.keys import KeyConflict, KeySpec, all_keys, create_key, revoke_key
from ..run import MAX_TOKENS
from ..store.base import instant

PREFIX = "/admin/v1"
MAX_ADMIN_BODY = 64 * 1024
NDJSON = "application/x-ndjson"
MAX_LEDGER = 100_000
LEDGER_PAGE = 1000  # entries read from the store, and written, at a time by an NDJSON export
_LIMIT = re.compile(r"[0-9]{1,6}")

log = structlog.get_logger("flowgate.admin")


class Conflict(GatewayError):
    status, kind, title = 409, "conflict", "Conflict"


class Unprocessable(GatewayError):
    status, kind, title = 422, "unprocessable", "Unprocessable Content"


class CreditGrant(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    amount: int = Field(gt=0, le=MAX_TOKENS, description="Credits to add (a whole number > 0).")


def _json(data, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _error(err: GatewayError) -> web.Response:
    return problem_response(err.status, err.title, err.detail, err.kind, type_uri=problem_type(err.status),
                            headers=err.headers or None)


def admin_route(handler):
    """Authorise (Admin), then run ``handler(request, gw)``; every GatewayError becomes problem+json."""

    async def view(request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        try:
            key = await identify(gw.keys, key_from_headers(request, "Admin"))
            bind_log(key_id=key.id)
            require(key, "Admin")
            return await handler(request, gw)
        except GatewayError as err:
            return _error(err)

    view.__name__ = handler.__name__
    view.__doc__ = handler.__doc__
    return view


async def _body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body validated by ``model``; 400 naming the field otherwise."""
    if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
        raise BadRequest(f"the body is larger than {MAX_ADMIN_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_ADMIN_BODY:
            raise BadRequest(f"the body is larger than {MAX_ADMIN_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = loads(raw)
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(body)"
            problems.append(f"{where}: {'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}")
        raise BadRequest("; ".join(problems)) from None


# --- keys
async def create_key_view(request: web.Request, gw: Gateway) -> web.Response:
    """Make a key: 201 with its secret, shown this once."""
    spec = await _body(request, KeySpec)
    assert isinstance(spec, KeySpec)
    try:
        secret, record = await create_key(gw.config, gw.store, spec)
    except LookupError as exc:
        raise Unprocessable(str(exc.args[0])) from None
    except KeyConflict as exc:
        raise Conflict(str(exc)) from None
    await gw.keys.sync()  # this process knows it at once (the others within a second, or on first use)
    view = {"id": record["id"], "secret": secret, "source": "api", "owner": record["owner"],
            "policies": record["policies"], "tenant": record["tenant"], "workspace": record["workspace"],
            "envs": record["envs"], "rate_limit": record["rate_limit"], "created_at": record["created_at"],
            "expires_at": record["expires_at"]}
    return _json(view, 201, {"Location": f"{PREFIX}/keys/{record['id']}"})


async def list_keys_view(request: web.Request, gw: Gateway) -> web.Response:
    """Every key, the config file's and the API's, each with its source; never a secret or hash."""
    return _json({"keys": await all_keys(gw.config, gw.store)})


async def revoke_key_view(request: web.Request, gw: Gateway) -> web.Response:
    """Revoke a key made through the API: 204; every replica refuses it within a second."""
    key_id = request.match_info["keyId"]
    try:
        deleted = await revoke_key(gw.config, gw.store, key_id)
    except KeyConflict as exc:
        raise Conflict(str(exc)) from None
    if not deleted:
        raise NotFound("no key with this id was made through the API")
    await gw.keys.sync()
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


# --- accounts
def _account(request: web.Request, gw: Gateway) -> tuple[str, int]:
    account = request.match_info["account"]
    acct = gw.config.accounts.get(account)
    if acct is None:
        raise NotFound("no such account in the config")
    return account, acct.initial_credits


def _figures(account: str, acct) -> dict:
    return {"account": account, "balance": acct.balance, "held": acct.held, "spent": acct.spent,
            "available": acct.balance - acct.held}


async def account_view(request: web.Request, gw: Gateway) -> web.Response:
    """An account's balance, held (open runs' holds) and spent credits."""
    account, initial = _account(request, gw)
    return _json(_figures(account, await gw.store.get_account(account, initial)))


async def grant_view(request: web.Request, gw: Gateway) -> web.Response:
    """Add credits to an account; answers its new figures."""
    account, initial = _account(request, gw)
    grant = await _body(request, CreditGrant)
    assert isinstance(grant, CreditGrant)
    await gw.store.grant(account, grant.amount, initial)
    if gw.balances is not None:
        gw.balances.changed(account)
    log.info("credits_granted", account=account, amount=grant.amount)
    return _json(_figures(account, await gw.store.get_account(account, initial)))


def _when(raw: str | None, name: str) -> float | None:
    """``since``/``until``: epoch seconds or an ISO 8601 date/time (UTC when no zone is given)."""
    if raw is None or raw == "":
        return None
    value = instant(raw)
    if value is None:
        raise BadRequest(f"{name} must be epoch seconds or an ISO 8601 date/time")
    return value


async def _ledger_pages(gw: Gateway, account: str, since: float | None, until: float | None, limit: int):
    """The entries ``since <= ended_at < until``, oldest first, at most ``limit``, read
    :data:`LEDGER_PAGE` at a time: each page starts at the last one's ``ended_at`` (the store's
    ``since`` is inclusive), skipping the entries of that instant already given."""
    cursor, given_at_cursor, left = since, set(), limit
    while left > 0:
        ask = min(LEDGER_PAGE, left) + len(given_at_cursor)
        page = await gw.store.ledger(account, since=cursor, limit=ask)
        fresh = [e for e in page if e.get("ended_at") != cursor or e.get("job_id") not in given_at_cursor]
        done = len(page) < ask
        if until is not None:
            before = [e for e in fresh if (e.get("ended_at") or 0) < until]
            done = done or len(before) < len(fresh)  # (oldest first: the rest are later still)
            fresh = before
        fresh = fresh[:left]
        if fresh:
            yield fresh
        last = fresh[-1].get("ended_at") if fresh else None
        if done or last is None:
            return
        left -= len(fresh)
        if last != cursor:
            cursor, given_at_cursor = last, set()
        given_at_cursor.update(e.get("job_id") for e in fresh if e.get("ended_at") == cursor)


async def ledger_view(request: web.Request, gw: Gateway) -> web.StreamResponse:
    """An account's settled runs, oldest first, ``since <= ended_at < until``; NDJSON when asked
    for with ``Accept: application/x-ndjson`` (exports: streamed a page at a time, never held
    whole), else a JSON object."""
    account, _ = _account(request, gw)
    since, until = _when(request.query.get("since"), "since"), _when(request.query.get("until"), "until")
    raw_limit = request.query.get("limit", "")
    if raw_limit and (_LIMIT.fullmatch(raw_limit) is None or not 1 <= int(raw_limit) <= MAX_LEDGER):
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LEDGER}")
    limit = int(raw_limit) if raw_limit else MAX_LEDGER
    pages = _ledger_pages(gw, account, since, until, limit)
    if NDJSON not in request.headers.get("Accept", ""):
        entries = [e async for page in pages for e in page]
        return _json({"account": account, "entries": entries, "generated_at": time.time()})
    first = await anext(pages, [])  # a store that is down now is a 503 problem, not a cut stream
    resp = web.StreamResponse(headers={"Cache-Control": "no-store"})
    resp.content_type = NDJSON
    await resp.prepare(request)
    try:
        await resp.write(b"".join(dumps(e) + b"\n" for e in first))
        async for page in pages:
            await resp.write(b"".join(dumps(e) + b"\n" for e in page))
    except GatewayError as err:  # the store went away mid-export: cut it (no last chunk), say so
        log.warning("ledger_export_cut", account=account, error=err.kind)
        if request.transport is not None:
            request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


# (method, path under PREFIX, handler, route name): the app mounts these; /openapi.json describes them
ROUTES = (
    ("POST", "/keys", create_key_view, "admin:keys_create"),
    ("GET", "/keys", list_keys_view, "admin:keys_list"),
    ("DELETE", "/keys/{keyId}", revoke_key_view, "admin:keys_revoke"),
    ("GET", "/accounts/{account}", account_view, "admin:account"),
    ("POST", "/accounts/{account}/credits", grant_view, "admin:credits_grant"),
    ("GET", "/accounts/{account}/ledger", ledger_view, "admin:ledger"),
)


def add_admin_routes(app: web.Application) -> None:
    for method, path, handler, name in ROUTES:
        app.router.add_route(method, PREFIX + path, admin_route(handler), name=name)
