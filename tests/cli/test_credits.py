"""The CLI: check-config exit codes and messages, keys new output that loads as config."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config import parse_config
from tests.backends import postgres_execute
from tests.conftest import base_config

ROOT = Path(__file__).resolve().parent.parent.parent


def flowgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_check_config_ok_and_bad(tmp_path):
    ok = flowgate("check-config", "config/flowgate.example.yaml")
    assert ok.returncode == 0 and "ok" in ok.stdout
    raw = base_config("http://127.0.0.1:9")
    raw["flows"][0]["targets"]["Production"]["backend"] = "ghost"
    raw["surprise"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = flowgate("check-config", str(bad))
    assert out.returncode != 0
    assert "surprise: unknown key" in out.stdout
    assert "flows[wf_text].targets.Production.backend" in out.stdout


def test_keys_new_prints_the_secret_once_and_a_loadable_entry():
    out = flowgate("keys", "new", "--owner", "acme", "--tenant", "t1", "--env", "prod".replace("prod", "2"))
    assert out.returncode == 0, out.stderr
    secret = next(line.split("# ", 1)[1] for line in out.stdout.splitlines() if line.startswith("# fg_"))
    entries = yaml.safe_load("\n".join(line for line in out.stdout.splitlines() if not line.startswith("#")))
    assert entries[0]["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert entries[0]["envs"] == ["Production"] and entries[0]["tenant"] == "t1"
    assert out.stdout.count(secret) == 1
    raw = base_config("http://127.0.0.1:9")
    raw["keys"] = entries
    assert parse_config(raw).keys[0].owner == "acme"


def test_credits_grant_show_and_ledger(tmp_path, store_url):
    """On every shared store (SQLite, Redis, Redis Cluster, PostgreSQL)."""
    import asyncio
    import json
    import time

    from proxy.store import open_store

    raw = base_config("http://127.0.0.1:9", store=store_url)
    cfg = tmp_path / "fg.yaml"
    cfg.write_text(yaml.safe_dump(raw))

    shown = flowgate("credits", "show", "acme", "--json", "--config", str(cfg))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"balance": 100000, "held": 0, "spent": 0}
    granted = flowgate("credits", "grant", "acme", "250", "--config", str(cfg))
    assert granted.returncode == 0 and "balance 100250" in granted.stdout

    async def settle_one():
        store = open_store(raw["store"])
        await store.start()
        try:
            await store.open_hold("job_1", "acme", 1000, time.time() + 60, {"flow": "wf_text", "key_id": "key_acme"})
            await store.settle("job_1", "acme", 42, {"outcome": "completed", "output_tokens": 42})
        finally:
            await store.close()

    asyncio.run(settle_one())
    shown = json.loads(flowgate("credits", "show", "acme", "--json", "--config", str(cfg)).stdout)
    assert shown == {"balance": 100250 - 42, "held": 0, "spent": 42}
    ledger = json.loads(flowgate("ledger", "acme", "--since", "1h", "--json", "--config", str(cfg)).stdout)
    assert [(e["job_id"], e["credits"], e["flow"]) for e in ledger] == [("job_1", 42, "wf_text")]
    future = flowgate("ledger", "acme", "--since", str(time.time() + 3600), "--json", "--config", str(cfg))
    assert json.loads(future.stdout) == []
    text = flowgate("ledger", "acme", "--config", str(cfg))
    assert "job_1" in text.stdout and "credits=42" in text.stdout
    unknown = flowgate("credits", "show", "nobody", "--config", str(cfg))
    assert unknown.returncode != 0 and "not an account" in unknown.stderr
    if store_url.startswith("postgresql://"):  # the ledger is a plain table an operator queries
        schema = store_url.rsplit("schema=", 1)[1]
        rows = postgres_execute(f"SELECT account, job_id, credits, outcome, flow, ended <= now() AS past "
                                f"FROM {schema}.ledger")
        assert [tuple(r) for r in rows] == [("acme", "job_1", 42, "completed", "wf_text", True)]


@pytest.mark.parametrize("amount", ["0", "-5", "1.5", "lots"])
def test_credits_grant_refuses_what_is_not_a_positive_whole_number(tmp_path, amount):
    cfg = tmp_path / "fg.yaml"
    cfg.write_text(yaml.safe_dump({"store": f"sqlite:///{tmp_path / 'fg.db'}",
                                   "accounts": {"acme": {"initial_credits": 5}}}))
    done = flowgate("credits", "grant", "acme", amount, "--config", str(cfg))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "grant" in done.stderr and not (tmp_path / "fg.db").exists()  # nothing was written


def test_output_cut_short_by_its_reader_is_no_traceback():
    """`flowgate keys new | head -1`: the reader goes away; flowgate stops quietly."""
    done = subprocess.run(f"{sys.executable} -m proxy keys new --owner acme | head -1", shell=True, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("#") and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
