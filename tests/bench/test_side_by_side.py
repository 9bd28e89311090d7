"""bench's side-by-side figure: the scenario counts both paths' lines and CPU over the same
seconds, and the targets table shows it beside the streams scenario's ratio, on which targets 1
and 2 are judged."""

from __future__ import annotations

import os
from types import SimpleNamespace

import aiohttp

from bench.report import table
from bench.scenarios import Path_, scenario_side_by_side


async def test_both_paths_stream_at_once_and_each_is_measured(backend):
    port, pid = backend
    # the backend itself on both sides (its pid and ours for CPU): what matters here is the bookkeeping
    a = Path_("flowgate token", f"http://127.0.0.1:{port}", pid, "plain")
    b = Path_("nginx", f"http://127.0.0.1:{port}", os.getpid(), "plain")
    async with aiohttp.ClientSession() as s:
        out = await scenario_side_by_side(s, a, b, 4)
    assert out["lines"] == 400  # 4 streams × 100 lines on the first path
    assert out["cpu_us_per_line"] > 0 and out["beside_cpu_us_per_line"] > 0
    assert out["ratio"] == out["cpu_us_per_line"] / out["beside_cpu_us_per_line"]


def _results(seq: float, at_once: list[float] | None) -> dict:
    streams = {"cpu_us_per_line": 10.0 * seq, "p50_ms": 1.0, "p99_ms": 2.0, "ttfb_p50_ms": 3.0}
    out = {"direct": {}, "nginx": {"streams": {"cpu_us_per_line": 10.0, "p50_ms": 1.0, "p99_ms": 2.0}}}
    for name in ("flowgate token", "flowgate events"):
        out[name] = {"streams": dict(streams)}
        if at_once is not None:
            rounds = [{"cpu_us_per_line": 10.0 * r, "beside_cpu_us_per_line": 10.0, "ratio": r} for r in at_once]
            ratio = sorted(at_once)[len(at_once) // 2]
            out[name]["side"] = {"cpu_us_per_line": 10.0 * ratio, "ratio": ratio, "rounds": rounds}
    return out


ARGS = SimpleNamespace(idle=[9000], streams=200, latency_streams=1000, bulk_mb=1024)


def _target(text: str, number: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {number}."))


def test_targets_1_and_2_are_judged_alone_with_the_side_by_side_ratio_beside():
    text = table(_results(1.10, [1.35, 1.40, 1.38]), ARGS)
    assert _target(text, "2").endswith("| yes |")  # 1.10 alone (the targets' definition), 1.38 at once
    assert "1.10×; side by side 1.38× (rounds 1.35–1.40)" in _target(text, "2")
    assert "each flowgate path and nginx at once" in text
    text = table(_results(1.40, [1.20, 1.25, 1.22]), ARGS)
    assert _target(text, "2").endswith("| no |") and _target(text, "1").endswith("| yes |")


def test_without_the_side_by_side_figure_the_streams_ratio_decides():
    text = table(_results(1.25, None), ARGS)
    assert _target(text, "2").endswith("| yes |") and "at once" not in text
    assert _target(table(_results(1.35, None), ARGS), "2").endswith("| no |")
