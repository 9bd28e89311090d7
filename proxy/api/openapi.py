"""``GET /openapi.json``: an OpenAPI 3.1 document of every route the app mounts.

The paths come from the app's own router (``app.router.routes()``), so a route that is mounted is
described and a route that is not, is not: the document cannot drift from what is served (a
dialect moved to another prefix moves in the document too). What each route takes and answers is
written once below, keyed by the route's name (``profitbase:run-streaming``, ``admin:keys_create``,
...); a mounted route without a description still appears, marked ``x-undescribed`` (the test suite
refuses that). Request schemas of the admin API come from the same pydantic models that validate
them. The document is built once per app, at its first request.
"""

from __future__ import annotations

import re

from aiohttp import web
from orjson import dumps

from .. import __version__
from ..context import GATEWAY
from ..errors import PROBLEM_JSON
from ..policies.keys import KeySpec
from .admin import CreditGrant

OPENAPI_KEY = web.AppKey("openapi", dict)  # {"body": bytes} once built

S = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": S + name}


# --- the shapes --------------------------------------------------------------------------------
def _schemas() -> dict:
    out: dict = {}
    for model in (KeySpec, CreditGrant):
        schema = model.model_json_schema(ref_template=S + "{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    string, integer, number = {"type": "string"}, {"type": "integer"}, {"type": "number"}
    nullable = {"type": ["string", "null"]}
    out.update({
        "Problem": {"type": "object", "description": "RFC 9457 problem details.", "required": ["status", "code"],
                    "properties": {"type": string, "title": string, "status": integer, "detail": string,
                                   "code": string}},
        "WorkflowError": {"type": "object", "required": ["success", "error", "code"],
                          "properties": {"success": {"const": False}, "error": string, "code": string}},
        "LangflowError": {"type": "object", "required": ["detail"],
                          "properties": {"detail": {"anyOf": [string, {"type": "array"}]}}},
        "StreamToken": {"type": "object", "required": ["success", "token", "ttl"],
                        "properties": {"success": {"const": True}, "token": {"type": "string", "pattern": "^pub_tok_"},
                                       "ttl": integer}},
        "WorkflowResult": {"type": "object", "required": ["success", "result"],
                           "properties": {"success": {"const": True}, "result": string}},
        "Job": {"type": "object", "description": "A settled run (its ledger entry).",
                "properties": {"job_id": string, "backend_job_id": nullable, "flow": string, "env": string,
                               "dialect": string, "status": {"type": ["integer", "null"]}, "outcome": string,
                               "reason": nullable, "input_tokens": integer, "output_tokens": integer,
                               "credits": integer, "started_at": number, "ended_at": number, "duration_s": number}},
        "Key": {"type": "object", "description": "A key as listed: never its secret or hash.",
                "required": ["id", "source", "owner", "policies"],
                "properties": {"id": string, "source": {"enum": ["config", "api"]}, "owner": string,
                               "policies": {"type": "array", "items": {"enum": ["Execute", "Admin"]}},
                               "tenant": nullable, "workspace": nullable,
                               "envs": {"type": ["array", "null"], "items": string},
                               "rate_limit": {"type": ["object", "null"]},
                               "created_at": {"type": ["number", "null"]}, "expires_at": {"type": ["number", "null"]},
                               "expired": {"type": "boolean"}}},
        "KeyCreated": {"allOf": [_ref("Key"), {"type": "object", "required": ["secret"], "properties": {
            "secret": {"type": "string", "description": "Shown this once; only its SHA-256 is kept."}}}]},
        "KeyList": {"type": "object", "required": ["keys"], "properties": {"keys": {"type": "array",
                                                                                      "items": _ref("Key")}}},
        "Account": {"type": "object", "required": ["account", "balance", "held", "spent", "available"],
                    "properties": {"account": string, "balance": integer, "held": integer, "spent": integer,
                                   "available": integer}},
        "Ledger": {"type": "object", "required": ["account", "entries"],
                   "properties": {"account": string, "entries": {"type": "array", "items": _ref("Job")},
                                  "generated_at": number}},
        "Status": {"type": "object", "required": ["status"], "properties": {"status": string, "store": string}},
    })
    return out


SECURITY_SCHEMES = {
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key",
                    "description": "profitbase and jobs routes: the key in the query (not with the header)"},
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key as a Bearer token."},
    "streamToken": {"type": "apiKey", "in": "query", "name": "token",
                    "description": "A single-use stream token (pub_tok_...) minted with GET api/v1/token."},
    "langflowKeyQuery": {"type": "apiKey", "in": "query", "name": "x-api-key"},
}


def _errors(media: str, schema: str, statuses: tuple[int, ...]) -> dict:
    return {str(s): {"description": DESCRIPTIONS.get(s, "Error"), "content": {media: {"schema": _ref(schema)}}}
            for s in statuses}


DESCRIPTIONS = {400: "Malformed request", 401: "No valid credential", 402: "No credits left", 403: "Forbidden",
                404: "Not found", 405: "Method not allowed", 408: "The request did not arrive in time",
                409: "Conflict", 413: "Body too large", 422: "Unprocessable", 429: "Rate limited",
                500: "The run failed", 502: "Backend unavailable", 503: "Store unavailable",
                504: "Backend timeout"}
RUN_ERRORS = (400, 401, 402, 403, 404, 408, 413, 429, 500, 502, 503, 504)
PROBLEMS = (PROBLEM_JSON, "Problem")


def _q(name: str, schema: dict, description: str = "", required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


ENV = {**_q("env", {"type": "string"}, "Development|Test|Production or 0|1|2, any case; default Production"),
       "example": "Production"}
RUN_BODY = {"required": False, "description": "Passed to the backend as is.",
            "content": {"application/json": {"schema": {}}, "application/octet-stream": {"schema": {}}}}
RUN_HEADERS = {"flow-job-id": {"description": "The gateway's job id of the run (a ULID).",
                               "schema": {"type": "string"}}}


def _ok(media: dict[str, dict], description: str = "OK", headers: dict | None = None) -> dict:
    out: dict = {"description": description, "content": {m: {"schema": s} for m, s in media.items()}}
    if headers:
        out["headers"] = headers
    return out


def _op(tags: str, summary: str, responses: dict, security: list | None = None, parameters: list | None = None,
        body: dict | None = None) -> dict:
    op: dict = {"tags": [tags], "summary": summary, "responses": responses}
    if security is not None:
        op["security"] = security
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    return op


def _profitbase(stream: bool) -> dict:
    summary = ("Run a flow, streamed as a JSON array (DeserializeAsyncEnumerable)" if stream
               else "Run a flow; the whole JSON array at once")
    return _op("profitbase", summary, {
        "200": _ok({"application/json": {"type": "array", "items": {}}}, headers=RUN_HEADERS),
        **_errors(*PROBLEMS, RUN_ERRORS)},
        [{"apiKeyHeader": []}, {"apiKeyQuery": []}], [ENV], RUN_BODY)


WF_ERR = ("application/json", "WorkflowError")
ADMIN_SECURITY = [{"bearer": []}, {"apiKeyHeader": []}]
ADMIN_ERRORS = (400, 401, 403, 503)


def _admin(summary: str, responses: dict, extra: tuple[int, ...] = (), **kw) -> dict:
    return _op("admin", summary, {**responses, **_errors(*PROBLEMS, ADMIN_ERRORS + extra)}, ADMIN_SECURITY, **kw)


def _json_body(schema: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


OPERATIONS = {
    "profitbase:run-streaming": _profitbase(True),
    "profitbase:stream": _profitbase(True),
    "profitbase:run": _profitbase(False),
    "workflow:token": _op("workflow", "Mint a single-use stream token (for a browser)", {
        "200": _ok({"application/json": _ref("StreamToken")}), **_errors(*WF_ERR, (400, 401, 404, 429, 503))},
        [{"bearer": []}, {"apiKeyHeader": []}],
        [_q("ttl", {"type": "integer"}, "seconds, clamped to 1..limits.token_ttl_max_s"),
         _q("workflow_id", {"type": "string"}, "bind the token to this flow")]),
    "workflow:stream": _op("workflow", "Run a flow with a stream token: plain text as generated (AI SDK text), or "
                           "with protocol=ui the AI SDK UI message stream (server-sent events, for useChat)", {
        "200": _ok({"text/plain": {"type": "string"}, "text/event-stream": {"type": "string"}},
                   "text/plain; with protocol=ui, text/event-stream and x-vercel-ai-ui-message-stream: v1",
                   headers={**RUN_HEADERS, "x-vercel-ai-ui-message-stream": {
                       "description": "v1 (protocol=ui only)", "schema": {"type": "string"}}}),
        **_errors(*WF_ERR, RUN_ERRORS)},
        [{"streamToken": []}], [ENV, _q("protocol", {"type": "string", "enum": ["text", "ui"]},
                                        "text (default): the AI SDK text stream; ui: its UI message stream")],
        RUN_BODY),
    "workflow:preflight": _op("workflow", "CORS preflight of the stream route", {
        "204": {"description": "Allowed"}, "403": {"description": "Origin, method or headers not allowed"}}, []),
    "workflow:run": _op("workflow", "Run a flow; the whole text at once", {
        "200": _ok({"application/json": _ref("WorkflowResult")}, headers=RUN_HEADERS),
        **_errors(*WF_ERR, RUN_ERRORS)}, [{"bearer": []}, {"apiKeyHeader": []}], [ENV], RUN_BODY),
    "langflow:run": _op("langflow", "Run a flow as Langflow's API does (events with stream=true)", {
        "200": _ok({"text/event-stream": {"type": "string"}, "application/json": {"type": "object"}},
                   headers=RUN_HEADERS),
        **_errors("application/json", "LangflowError", RUN_ERRORS + (422,))},
        [{"apiKeyHeader": []}, {"langflowKeyQuery": []}], [_q("stream", {"type": "boolean"}), ENV], RUN_BODY),
    "jobs:get": _op("jobs", "A settled run's record, for its owner's key", {
        "200": _ok({"application/json": _ref("Job")}), **_errors(*PROBLEMS, (400, 401, 403, 404, 503))},
        [{"apiKeyHeader": []}, {"apiKeyQuery": []}]),
    "ops:healthz": _op("operations", "The process is up", {"200": _ok({"application/json": _ref("Status")})}, []),
    "ops:readyz": _op("operations", "The store is reachable", {
        "200": _ok({"application/json": _ref("Status")}),
        "503": _ok({"application/json": _ref("Status")}, "The store is unreachable")}, []),
    "ops:metrics": _op("operations", "Prometheus metrics", {"200": _ok({"text/plain": {"type": "string"}})}, []),
    "ops:openapi": _op("operations", "This document", {"200": _ok({"application/json": {"type": "object"}})}, []),
    "admin:keys_create": _admin("Make a key (its secret is shown once)", {
        "201": _ok({"application/json": _ref("KeyCreated")}, "Made", {"Location": {"schema": {"type": "string"}}})},
        (409, 422), body=_json_body("KeySpec")),
    "admin:keys_list": _admin("Every key (config file and API), without secrets or hashes", {
        "200": _ok({"application/json": _ref("KeyList")})}),
    "admin:keys_revoke": _admin("Revoke a key made through the API (every replica within a second)", {
        "204": {"description": "Revoked"}}, (404, 409)),
    "admin:account": _admin("An account's balance, held and spent credits", {
        "200": _ok({"application/json": _ref("Account")})}, (404,)),
    "admin:credits_grant": _admin("Add credits to an account", {
        "200": _ok({"application/json": _ref("Account")})}, (404,), body=_json_body("CreditGrant")),
    "admin:ledger": _admin("An account's settled runs, oldest first (NDJSON with Accept: application/x-ndjson)", {
        "200": _ok({"application/json": _ref("Ledger"), "application/x-ndjson": {"type": "string"}})}, (404,),
        parameters=[_q("since", {"type": "string"}, "epoch seconds or ISO 8601; ended_at >= since"),
                    _q("until", {"type": "string"}, "epoch seconds or ISO 8601; ended_at < until"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 100000})]),
}

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def _examples(app: web.Application) -> dict[str, str]:
    """Path parameter examples from the config (the first published flow, the first account), so
    that a reader, or a fuzzer's explicit phase, can reach a real flow."""
    gw = app.get(GATEWAY)
    if gw is None:
        return {}
    out: dict[str, str] = {}
    flow = next((f for f in gw.config.flows if f.published), None)
    if flow is not None:
        out.update(flowId=flow.id, workflowId=flow.id, flowIdOrName=flow.name or flow.id)
        if flow.tenant:
            out["tenantId"] = flow.tenant
        if flow.workspace:
            out["workspaceId"] = flow.workspace
    account = next(iter(gw.config.accounts), None)
    if account is not None:
        out["account"] = account
    return out


def build_document(app: web.Application) -> dict:
    """The OpenAPI document of ``app``'s mounted routes."""
    paths: dict[str, dict] = {}
    examples = _examples(app)
    for route in app.router.routes():
        if route.method == "HEAD" or route.name is None:
            continue  # aiohttp's implicit HEAD of a GET
        path = route.resource.canonical if route.resource is not None else ""
        op = dict(OPERATIONS.get(route.name) or {"summary": route.name, "x-undescribed": True,
                                                   "responses": {"default": {"description": "?"}}})
        op["operationId"] = re.sub(r"[^A-Za-z0-9_]", "_", route.name)
        names = _PARAM.findall(path)
        if names:
            op["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"},
                                 **({"example": examples[n]} if n in examples else {})}
                                for n in names] + op.get("parameters", [])
        paths.setdefault(_PARAM.sub(lambda mt: "{" + mt.group(1) + "}", path), {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "flowgate", "version": __version__,
                 "description": "Streaming API gateway for flow runtimes: the public run APIs (profitbase, workflow, "
                                "langflow dialects), stream tokens, job records, the admin API and operations."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": _schemas(), "securitySchemes": SECURITY_SCHEMES},
    }


def add_openapi_route(app: web.Application) -> None:
    app[OPENAPI_KEY] = {}
    app.router.add_get("/openapi.json", openapi_view, name="ops:openapi")


async def openapi_view(request: web.Request) -> web.Response:
    cache = request.app[OPENAPI_KEY]
    if "body" not in cache:
        cache["body"] = dumps(build_document(request.app))
    return web.Response(body=cache["body"], content_type="application/json")
