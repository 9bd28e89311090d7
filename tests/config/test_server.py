"""The server section's workers: ``auto`` is the usable cores, capped by a cgroup CPU quota (a
container's ``cpus:``, which is a quota and not an affinity); memory:// runs one process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.config import ConfigError, parse_config
from proxy.config import server as server_mod
from proxy.config.server import cgroup_cpu_limit
from tests.conftest import base_config


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[str, str]:
    (tmp_path / "cgroup").write_text(proc)
    for rel, text in files.items():
        f = tmp_path / "fs" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (tmp_path / "fs").mkdir(exist_ok=True)
    return str(tmp_path / "cgroup"), str(tmp_path / "fs")


@pytest.mark.parametrize("proc, files, want", [
    ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),                      # docker --cpus 1.5 (cgroup v2, own ns)
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),                       # no quota
    ("0::/\n", {}, None),                                                # the root cgroup has no cpu.max
    ("0::/docker/abc\n", {"cpu.max": "max 100000\n", "docker/abc/cpu.max": "50000 100000\n"}, 1),
    ("0::/a/b\n", {"a/cpu.max": "300000 100000\n", "a/b/cpu.max": "max 100000\n"}, 3),  # a parent's quota
    ("0::/docker/abc\n", {"cpu.max": "200000 100000\n"}, 2),             # host path, container's own mount
    ("4:cpu,cpuacct:/docker/abc\n", {"cpu,cpuacct/cpu.cfs_quota_us": "400000\n",
                                     "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 4),   # cgroup v1
    ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     None),
    ("garbage\n", {}, None),
])
def test_the_cgroup_cpu_quota(tmp_path, proc, files, want):
    assert cgroup_cpu_limit(*_tree(tmp_path, proc, files)) == want


def test_auto_is_capped_by_the_quota(monkeypatch):
    raw = base_config("http://127.0.0.1:9", store="sqlite:////tmp/x.db")
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(server_mod, "cgroup_cpu_limit", lambda: 1)
    assert parse_config(raw).server.worker_count() == 1
    monkeypatch.setattr(server_mod, "cgroup_cpu_limit", lambda: 10_000)
    assert parse_config(raw).server.worker_count() == cores
    raw["server"]["workers"] = 3  # an explicit number is taken as is
    assert parse_config(raw).server.worker_count() == 3


def test_memory_store_is_one_process():
    """memory:// with several workers: each kept its own balances (credits multiplied), tokens and keys."""
    raw = base_config("http://127.0.0.1:9")
    assert raw["store"] == "memory://"
    assert parse_config(raw).worker_count() == 1  # auto
    raw["server"]["workers"] = 2
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert exc.value.problems[0].startswith("server.workers: 2 with store memory://, which lives in one process")
