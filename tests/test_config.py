"""Config: the example file loads, every cross-reference is checked at load with a named key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from proxy.config import ConfigError, load_config, parse_config
from proxy.env import Env
from tests.conftest import base_config

ROOT = Path(__file__).resolve().parent.parent


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    return exc.value.problems


@pytest.fixture
def raw() -> dict:
    return base_config("http://127.0.0.1:9")


def test_example_config_is_valid_and_documents_every_top_level_key():
    cfg = load_config(ROOT / "config" / "flowgate.example.yaml")
    assert cfg.flow("wf_abc123").targets[Env.Production].backend == "lf"
    text = (ROOT / "config" / "flowgate.example.yaml").read_text()
    for section, model in [("server", cfg.server), ("limits", cfg.limits), ("cors", cfg.cors)]:
        for name in type(model).model_fields:
            assert f"{name}:" in text, f"{section}.{name} is not documented in the example"
    for model in (cfg.flows[0], cfg.keys[0], cfg.backends["lf"]):
        for name in type(model).model_fields:
            assert f"{name}:" in text, f"{type(model).__name__}.{name} is not documented in the example"


def test_unknown_key_is_named(raw):
    raw["server"]["prot"] = 1
    raw["flows"][0]["targetz"] = {}
    found = problems(raw)
    assert "server.prot: unknown key" in found
    assert "flows[wf_text].targetz: unknown key" in found


def test_flow_pointing_at_missing_backend(raw):
    raw["flows"][0]["targets"]["Production"]["backend"] = "ghost"
    found = problems(raw)
    assert any(p.startswith("flows[wf_text].targets.Production.backend: 'ghost' is not a backend") for p in found)


def test_owner_that_is_not_an_account(raw):
    raw["flows"][1]["owner"] = "nobody"
    raw["keys"][0]["owner"] = "nobody"
    found = problems(raw)
    assert any(p.startswith("flows[wf_lf].owner:") for p in found)
    assert any(p.startswith("keys[key_acme].owner:") for p in found)


def test_colliding_dialect_mounts(raw):
    raw["dialects"] = {"workflow": {"prefix": "/"}, "langflow": {"prefix": "/"}}
    found = problems(raw)
    assert any(p.startswith("dialects.workflow.prefix: mounts collide") for p in found), found
    raw["dialects"] = {"langflow": {"prefix": "/"}, "profitbase": {"prefix": "/"}}
    parse_config(raw)  # fronting Langflow alone at / is fine


def test_per_flow_cap_above_global(raw):
    raw["limits"] = {"max_duration_s": 100}
    raw["flows"][0]["max_duration_s"] = 200
    assert any(p.startswith("flows[wf_text].max_duration_s: 200 is above limits.max_duration_s") for p in problems(raw))


def test_global_cap_above_300(raw):
    raw["limits"] = {"max_duration_s": 301}
    assert any(p.startswith("limits.max_duration_s:") for p in problems(raw))


def test_bad_env_name_in_targets_and_key_scope(raw):
    bad = copy.deepcopy(raw)
    bad["flows"][0]["targets"]["Staging"] = {"backend": "text", "path": "/x"}
    bad["keys"][0]["envs"] = ["Prod"]
    found = problems(bad)
    assert any(p.startswith("flows[wf_text].targets:") and "Staging" in p for p in found)
    assert any(p.startswith("keys[key_acme].envs:") for p in found)


def test_bad_sha256(raw):
    raw["keys"][1]["sha256"] = "abc"
    assert any(p.startswith("keys[key_other].sha256:") for p in problems(raw))


def test_duplicate_ids(raw):
    raw["flows"].append(dict(raw["flows"][0]))
    raw["keys"].append({**raw["keys"][0], "sha256": "0" * 64})
    found = problems(raw)
    assert any(p.startswith("flows[wf_text].id: duplicate flow id") for p in found), found
    assert any(p.startswith("keys[key_acme].id: duplicate key id") for p in found), found


def test_env_interpolation(tmp_path, monkeypatch):
    raw = base_config("http://127.0.0.1:9")
    raw["backends"]["lf"]["headers"] = {"x-api-key": "${FG_TEST_LF_KEY}", "x-b": "${FG_TEST_UNSET:-dflt}"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("FG_TEST_LF_KEY", "s3cret")
    cfg = load_config(path)
    assert cfg.backends["lf"].headers == {"x-api-key": "s3cret", "x-b": "dflt"}
    monkeypatch.delenv("FG_TEST_LF_KEY")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.problems == ["backends.lf.headers.x-api-key: environment variable FG_TEST_LF_KEY is not set"]


def test_prefix_is_normalized(raw):
    raw["dialects"] = {"langflow": {"prefix": "/lf"}}
    assert parse_config(raw).dialects["langflow"].prefix == "/lf/"


@pytest.mark.parametrize("option", ["client_head_timeout_s", "client_body_timeout_s", "client_write_timeout_s",
                                    "client_lingering_s", "max_connections"])
def test_client_timers_and_the_connection_cap_must_be_positive(raw, option):
    raw["server"][option] = 0
    assert any(p.startswith(f"server.{option}") for p in problems(raw))


@pytest.mark.parametrize("value", [0, -1, 257, "many", True, 2.5, None])
def test_workers_is_a_whole_number_or_auto(raw, value):
    raw["server"]["workers"] = value
    assert problems(raw) == [f"server.workers: must be a whole number from 1 to 256, or auto (got {value!r})"]


def test_workers_auto_is_the_usable_cores(raw):
    import os

    assert parse_config(raw).server.workers == "auto"
    assert parse_config(raw).server.worker_count() == len(os.sched_getaffinity(0))
    raw["store"] = "sqlite:////tmp/fg.db"  # (memory:// is one process: see below)
    raw["server"]["workers"] = 3
    raw["store"] = "sqlite:////tmp/fg.db"  # (memory:// is one process: see tests/config/test_server.py)
    assert parse_config(raw).server.worker_count() == 3


def test_workers_share_a_store_so_memory_is_one_process(raw):
    """memory:// is each process's own: with workers, a token minted by one worker would be unknown
    to the next, and each worker would grant an account its credits anew."""
    raw["store"] = "memory://"
    assert parse_config(raw).worker_count() == 1  # auto
    raw["server"]["workers"] = 2
    assert problems(raw) == ["server.workers: 2 with store memory://, which lives in one process (each worker "
                             "would keep its own credits, tokens and rate limits): use a shared store, or workers: 1"]
    raw["store"] = "sqlite:////tmp/fg.db"
    assert parse_config(raw).worker_count() == 2
