"""`flowgate keys create|list|revoke` against the store, as the admin API does it."""

from __future__ import annotations

import json

import yaml

from tests.cli.test_credits import flowgate
from tests.conftest import SECRET, base_config, sha


def _cfg(tmp_path) -> str:
    raw = base_config("http://127.0.0.1:9", store=f"sqlite:///{tmp_path / 'fg.db'}")
    path = tmp_path / "fg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_create_list_revoke(tmp_path):
    cfg = _cfg(tmp_path)
    made = flowgate("keys", "create", "--owner", "acme", "--env", "prod".replace("prod", "Production"),
                    "--expires-in", "3600", "--json", "--config", cfg)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["secret"].startswith("fg_") and key["expires_at"] is not None
    listing = flowgate("keys", "list", "--json", "--config", cfg)
    assert listing.returncode == 0
    assert key["secret"] not in listing.stdout and sha(key["secret"]) not in listing.stdout
    assert sha(SECRET) not in listing.stdout and "sha256" not in listing.stdout
    rows = {k["id"]: k for k in json.loads(listing.stdout)}
    assert rows[key["id"]]["source"] == "api" and rows[key["id"]]["envs"] == ["Production"]
    assert rows["key_acme"]["source"] == "config"
    text = flowgate("keys", "list", "--config", cfg)
    assert key["id"] in text.stdout and "expires" in text.stdout
    # a config key is not revoked here; an unknown one is an error; the API key goes
    conf = flowgate("keys", "revoke", "key_acme", "--config", cfg)
    assert conf.returncode != 0 and "config" in conf.stderr
    assert flowgate("keys", "revoke", "nope", "--config", cfg).returncode != 0
    gone = flowgate("keys", "revoke", key["id"], "--config", cfg)
    assert gone.returncode == 0, gone.stderr
    assert key["id"] not in flowgate("keys", "list", "--config", cfg).stdout


def test_create_refuses_bad_input_without_a_traceback(tmp_path):
    cfg = _cfg(tmp_path)
    for args in (["--owner", "nobody"], ["--owner", "acme", "--env", "Staging"],
                 ["--owner", "acme", "--expires-in", "0"], ["--owner", "acme", "--id", "key_acme"],
                 ["--owner", "acme", "--policy", "Root"]):
        done = flowgate("keys", "create", *args, "--config", cfg)
        assert done.returncode != 0 and "Traceback" not in done.stderr, (args, done.stderr)
    assert "api" not in flowgate("keys", "list", "--config", cfg).stdout


def test_text_output_shows_the_secret_once(tmp_path):
    done = flowgate("keys", "create", "--owner", "acme", "--policy", "Admin", "--config", _cfg(tmp_path))
    assert done.returncode == 0, done.stderr
    secret = next(line for line in done.stdout.splitlines() if line.startswith("fg_"))
    assert done.stdout.count(secret) == 1 and "Admin" in done.stdout
