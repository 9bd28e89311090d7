"""bench.split: the two line counts give back a line's and a run's CPU, its batches count every
line they stream, and the flows it adds are a config flowgate loads."""

from __future__ import annotations

import os

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.scenarios import Path_
from bench.split import FLOWS, LONG, SHORT, _batch, _config, split
from proxy.config import load_config


@given(st.floats(0.5, 100.0), st.floats(0.0, 5000.0), st.integers(1, 1000))
def test_split_gives_back_the_per_line_and_per_run_cpu(per_line_us, per_run_us, streams):
    def batch(lines: int) -> tuple[float, int]:
        return streams * (per_line_us * lines + per_run_us) / 1e6, streams * lines

    a, b = split(batch(SHORT), batch(LONG), streams)
    assert a == pytest.approx(per_line_us, rel=1e-6, abs=1e-6)
    assert b == pytest.approx(per_run_us, rel=1e-6, abs=1e-3)


def test_the_split_flows_load_and_name_their_backends(tmp_path):
    cfg = load_config(_config(tmp_path, 8080, 9090))
    for kind, backend in (("token", "bench"), ("events", "bench_lf")):
        for lines in (SHORT, LONG):
            raw, flow, _ = FLOWS[kind][lines]
            target = cfg.flow(flow).targets["Production"]
            assert (target.backend, target.path) == (backend, raw)
            assert f"n={lines}&" in raw


async def test_a_batch_counts_every_line_and_the_process_cpu(backend):
    # the backend itself as the "proxy" (this process's pid for CPU): what matters is the bookkeeping
    path = Path_("nginx", f"http://127.0.0.1:{backend[0]}", os.getpid(), "plain")
    async with aiohttp.ClientSession() as s:
        cpu, lines = await _batch(s, path, "plain", SHORT, 3)
    assert lines == 3 * SHORT
    assert cpu > 0
