"""One run's lifecycle: dialect.parse -> policies.on_request -> body (a chat request mapped for the
backend) -> forward -> pump -> on_complete.

The dialect parses the head only; the body is read after the whole chain admitted the run, so a
stranger (no key, a bogus key, an unknown flow) is answered before one byte of its body is read.

The only place that sequences a run. Errors raised before the response is prepared are rendered
by the dialect; after that the pump ends the stream as the format allows. ``on_complete`` runs
exactly once for every policy whose ``on_request`` passed, whatever the ending, shielded from the
cancellation that aiohttp delivers when the client goes away.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from .. import metrics as m
from ..context import GATEWAY, Gateway
from ..dialects import Collected, Dialect
from ..errors import BackendTimeout, BadRequest, GatewayError, RequestTimeout, RunFailed
from ..http1.headers import JOB_ID_HEADER
from ..logging import bind as bind_log
from ..policies import Chain, Policy
from ..protocols import new_decoder, new_encoder
from ..protocols.chat import JSON, ChatRequestError, backend_body
from ..run import BACKEND_ERROR, CLIENT_DISCONNECTED, COMPLETED, DEADLINE, REJECTED, RUN, Run
from ..stream.ending import finish
from ..stream.pump import Pump
from ..stream.sinks import BufferSink
from ..upstream.forward import body_failure, open_upstream
from .cors import cors_headers

log = structlog.get_logger("flowgate.run")

DEADLINE_MESSAGE = "the run reached its maximum duration"


async def handle_run(request: web.Request, dialect: Dialect, route: str) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    chains, config = gw.chains, gw.config  # in force now: this run keeps them to its end, whatever a reload swaps in
    cors = cors_headers(config.cors, request) if route in dialect.cors_routes else {}
    try:
        run = await dialect.parse(request, route)  # the head only: not one byte of the body is read yet
        dialect.check_length(request)
    except GatewayError as err:
        m.child(m.REJECTIONS, dialect.name, err.kind).inc()
        return _error(dialect, err, cors)
    request[RUN] = run
    bind_log(job_id=run.job_id)
    admitted: list[Policy] = []
    try:
        chain = chains[run.credential_kind]
        await chain.admit(run, admitted)
        # the hard cap (flow.max_duration_s, never above limits.max_duration_s) counts from here,
        # and is enforced here: around the body, the backend's answer and the whole stream
        assert run.flow is not None
        run.deadline = asyncio.get_running_loop().time() + config.run_cap_s(run.flow)
        # admitted (credential, flow, credits, rate): now the body, under max_body_bytes, the body
        # timer and the run's own cap (a body trickled past it would outlive the run's credit hold);
        # a 413/408 here releases the hold through on_complete (a spent token stays spent)
        try:
            if getattr(request, "body_complete", False):  # (flowgate's front: it came with the head)
                run.body = await dialect.read_body(request)
            else:
                async with asyncio.timeout_at(run.deadline):
                    run.body = await dialect.read_body(request)
        except TimeoutError:
            raise RequestTimeout("the request body did not arrive within the run's maximum duration") from None
        if dialect.maps_chat:
            _map_chat(run)
        bind_log(flow=run.flow_id, key_id=run.key_id, env=run.env.value)
        return await _execute(gw, chain, run, dialect, cors)
    except GatewayError as err:
        if run.outcome is None:  # refused before anything reached a backend
            run.outcome = REJECTED
            m.child(m.REJECTIONS, dialect.name, run.reason or err.kind).inc()
        run.reason = run.reason or err.kind
        resp = _error(dialect, err, {**run.response_headers, **cors})
        run.status = resp.status
        return resp
    finally:
        if run.outcome is None:  # cancelled: aiohttp saw the client go away
            run.outcome = CLIENT_DISCONNECTED
        try:
            await asyncio.shield(_complete(chains[run.credential_kind], run, admitted))
        finally:
            # request -> run (for the access line) stays; run -> request goes, so that neither
            # waits for the cyclic GC, whose full passes over thousands of open streams stall the loop
            run.request = None  # type: ignore[assignment]


def _map_chat(run: Run) -> None:
    """An AI SDK chat request becomes the backend protocol's own body (proxy.protocols.chat)."""
    assert run.backend is not None
    try:
        mapped = backend_body(run.backend.protocol, run.body)
    except ChatRequestError as err:
        raise BadRequest(str(err)) from None
    if mapped is not None:
        run.body, run.body_type = mapped, JSON


def _error(dialect: Dialect, err: GatewayError, extra: dict[str, str]) -> web.Response:
    resp = dialect.render_error(err)
    resp.headers.update(extra)
    return resp


async def _execute(gw: Gateway, chain: Chain, run: Run, dialect: Dialect, cors: dict[str, str]):
    assert run.backend is not None and gw.upstreams is not None
    decoder = new_decoder(run.backend.protocol)
    output = run.output or dialect.output
    encoder = new_encoder(output, run)
    passthrough = run.stream and run.backend.protocol == output
    flow = run.flow_id or m.UNKNOWN_FLOW
    m.child(m.RUNS_STARTED, run.dialect, flow).inc()
    run.extra["forwarded"] = True
    upstream = None
    pump: Pump | None = None
    buffer: list[bytes] = []
    collected_by: BufferSink | None = None
    outcome: str | None = None
    streams_open = m.child(m.STREAMS_OPEN, run.dialect, flow)
    try:
        try:
            async with asyncio.timeout_at(run.deadline):
                upstream = await open_upstream(gw.upstreams, run)
                # the backend's own id (the connection keeps it only if it is a plain token): recorded, never a key
                run.backend_job_id = upstream.headers.get(JOB_ID_HEADER)
                if run.backend_job_id is not None:
                    bind_log(backend_job_id=run.backend_job_id)
                pump = Pump(run, upstream, decoder, encoder, passthrough, chain)
                if run.stream:
                    await pump.start(pump.response_headers({**cors, **run.response_headers}))
                    run.status = 200
                    streams_open.inc()
                else:
                    collected_by = pump.collect_into(buffer)
                outcome = await pump.pump()
        except TimeoutError:
            outcome = DEADLINE
            done = pump.done if pump is not None else None
            if done is not None and done.done() and not done.cancelled():
                outcome = done.result()  # the stream had ended (and was closed) before the cap fired
            elif pump is None or (run.stream and pump.resp is None):
                m.child(m.BACKEND_FAILURES, run.target.backend if run.target else "", "timeout").inc()
                run.extra["backend_error"] = "no answer before the run's maximum duration"
                raise BackendTimeout("the run reached its maximum duration before the backend answered") from None
            else:
                pump.message = DEADLINE_MESSAGE
        except ConnectionResetError:  # the client went away while the response was prepared
            outcome = CLIENT_DISCONNECTED
        run.outcome = outcome
        if outcome == BACKEND_ERROR:
            run.reason = run.reason or "backend_broken"
            kind = getattr(upstream, "kind", None)
            run.extra.setdefault("backend_error", f"the body broke off ({kind})" if kind else
                                 "the body broke off, or the backend sent an error event")
            m.child(m.BACKEND_FAILURES, run.target.backend if run.target else "", "broken").inc()
        if not run.stream:
            assert pump is not None and collected_by is not None
            if outcome != COMPLETED:
                if outcome == DEADLINE:
                    raise BackendTimeout(DEADLINE_MESSAGE)
                raise body_failure(upstream) or RunFailed("the workflow run failed")
            buffer.append(encoder.close())
            collected = Collected(body=b"".join(buffer), text="".join(collected_by.texts),
                                  result=collected_by.result)
            resp = dialect.render_result(run, collected)
            resp.headers.update(run.response_headers)
            resp.headers[JOB_ID_HEADER] = run.job_id
            run.status = resp.status
            return resp
        assert pump is not None and pump.resp is not None
        if outcome != CLIENT_DISCONNECTED:
            pump.message = dialect.stream_error(outcome, pump.message)
            try:
                await finish(pump, outcome)
            except ConnectionResetError:
                run.outcome = CLIENT_DISCONNECTED
        return pump.resp
    except GatewayError:
        if run.outcome is None:
            run.outcome = BACKEND_ERROR
        raise
    finally:
        if pump is not None:
            pump.detach()
        if run.status == 200 and run.stream:
            streams_open.dec()
        if upstream is not None:
            if outcome == COMPLETED:
                upstream.release()
            else:
                upstream.close()  # drop the backend connection at once: it stops generating


async def _complete(chain: Chain, run: Run, admitted: list[Policy]) -> None:
    await chain.complete(run, admitted)
    if run.extra.get("forwarded"):
        flow = run.flow_id or m.UNKNOWN_FLOW
        outcome = run.outcome or CLIENT_DISCONNECTED
        m.child(m.RUNS_ENDED, run.dialect, flow, outcome).inc()
        m.child(m.RUN_DURATION, run.dialect, flow, outcome).observe(time.monotonic() - run.started_mono)
        m.child(m.BYTES_IN, flow).inc(run.bytes_in)
        m.child(m.BYTES_OUT, run.dialect, flow).inc(run.bytes_out)
        m.child(m.TOKENS, flow, "output").inc(run.meter.output_tokens)
        m.child(m.TOKENS, flow, "input").inc(run.meter.input_tokens)
